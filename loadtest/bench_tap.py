"""Tap-to-answer latency of the terminal agent through the real PC/SC stack.

    .venv/bin/python -m loadtest.bench_tap [--sales 200] [--placements 30] [--output F]

Starts, in a temporary folder, PostgreSQL, a software HSM, the authorization server, pcscd with
the vpcd driver (as the tests do: root, and no other pcscd, which it stops) and a virtual card,
then measures in the same run:
- get_uid: the reader alone, card already on it (CardReader.wait_for_uid);
- purchase: the signed purchase alone, no reader, no journal (TerminalClient);
- present_to_answer: a whole agent sale, card already on the reader (read, journal, sign with
  sealed future keys, server, answer checked, journal);
- place_to_answer: the agent waiting, then the card placed: includes pcscd's presence poll
  (every 400 ms), which dominates.
Prints p50/p99 in ms and writes them to a JSON file.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo


from testbed.pcscd import (READER_0, Pcscd, lock_pcscd_for_this_session, stop_foreign_pcscd,
                           stop_systemd_pcscd, wait_reader_state, SYSTEMCTL_TIMEOUT_S)
from testbed.virtual_card import VirtualCard

from hdfpay.config import Settings
from ledger.database import connection
from backoffice.provisioning import new_bdk, provision_unkeyed_terminals
from hdfpay.server import running_server
from hsm.software_backend import SoftwareHsm
from ledger.clock import pin_clock
from ledger.demo_region import card_uid, seed_demo_region, terminal_id
from ledger.embedded import throwaway_cluster, throwaway_workdir
from ledger.migrate import migrate
from terminal_protocol.agent.agent_config import AgentConfig
from terminal_protocol.agent.card_reader import CardReader
from terminal_protocol.agent.future_keys import FutureKeyTerminal
from terminal_protocol.agent.runtime import STATE_KEY_ENV, running_agent, sealed_state
from terminal_protocol.agent.supervisor_pin import write_pin
from terminal_protocol.client import TerminalClient
from terminal_protocol.ksn_counter import MemoryCounter
from terminal_protocol.terminal_keys import TerminalKeys

BENCH_SUPERVISOR_PIN = "0000"      # the agent refuses to start without one; sales never ask it
PARIS = ZoneInfo("Europe/Paris")
BENCH_BENEFICIARIES = 50
SALE_AMOUNT_CENTS = 1
WARMUP_SALES = 10
PLACEMENT_TIMEOUT_MS = 5_000
# School year 2026-2027, a Thursday morning inside the wallet window.
BENCH_BUSINESS_TIME = dt.datetime(2026, 11, 26, 10, 0, tzinfo=PARIS)


def percentiles_ms(samples_s: list[float]) -> dict[str, float]:
    ordered = sorted(samples_s)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"n": len(ordered), "p50_ms": round(statistics.median(ordered) * 1000, 3),
            "p99_ms": round(p99 * 1000, 3)}


async def _timed(action, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await action()
        samples.append(time.perf_counter() - started)
    return samples


async def run(sales: int, placements: int, output: Path) -> dict:
    with throwaway_workdir("bench-tap") as workdir:
        results = await _run_in(workdir, sales, placements)
    output.write_text(json.dumps(results, indent=2) + "\n")
    return results


async def _run_in(workdir: Path, sales: int, placements: int) -> dict:
    cluster = throwaway_cluster(workdir)
    hsm = SoftwareHsm(workdir / "keystore.json", passphrase=os.urandom(16).hex(), create=True)
    session_lock = lock_pcscd_for_this_session()    # never beside a test session's pcscd
    systemd_units = stop_systemd_pcscd()
    stop_foreign_pcscd()
    pcscd = Pcscd(workdir)
    pcscd.start()
    card = VirtualCard(0, card_uid(5))
    try:
        dsn = cluster.start()
        async with connection(dsn) as conn:
            await migrate(conn)
            await pin_clock(conn, BENCH_BUSINESS_TIME)
            await seed_demo_region(conn, beneficiaries=BENCH_BENEFICIARIES, school_year=2026)
            new_bdk(hsm)
            deliveries = await provision_unkeyed_terminals(conn, hsm)
        settings = dataclasses.replace(Settings.from_env(), database_url=None, host="127.0.0.1",
                                       port=0)
        async with running_server(settings, dsn, hsm) as server:
            results = await _measure(server.url, deliveries, workdir, card, sales, placements)
    finally:
        card.remove()
        pcscd.stop()
        hsm.close()
        if systemd_units:
            subprocess.run(["systemctl", "start", *systemd_units], check=False,
                           timeout=SYSTEMCTL_TIMEOUT_S)
        session_lock.close()
    return results


async def _measure(url, deliveries, workdir: Path, card: VirtualCard, sales: int,
                   placements: int) -> dict:
    results: dict = {"sales": sales, "placements": placements}
    card.insert()
    wait_reader_state(READER_0, present=True)
    reader = CardReader(READER_0)
    results["get_uid"] = percentiles_ms(await _timed(
        lambda: asyncio.to_thread(reader.wait_for_uid, PLACEMENT_TIMEOUT_MS), sales))
    reader.close()

    plain_terminal = terminal_id(1, 1)
    delivered, transport_key = deliveries[plain_terminal]
    keys = TerminalKeys.from_key_block(delivered.key_block, transport_key, MemoryCounter(),
                                       delivered.initial_key_id)
    async with TerminalClient(url, plain_terminal, keys) as client:
        for _ in range(WARMUP_SALES):
            await client.purchase(card.uid, SALE_AMOUNT_CENTS)
        results["purchase"] = percentiles_ms(await _timed(
            lambda: client.purchase(card.uid, SALE_AMOUNT_CENTS), sales))

    agent_terminal = terminal_id(2, 1)
    environ = {STATE_KEY_ENV: os.urandom(32).hex()}
    config = AgentConfig(server_url=url, terminal_id=agent_terminal, state_dir=workdir / "agent",
                         reader=READER_0, ca_file=None, answer_timeout_ms=5_000,
                         tap_timeout_ms=PLACEMENT_TIMEOUT_MS, max_sale_cents=300_00,
                         till_api_port=0)
    config.state_dir.mkdir(mode=0o700)
    delivered, transport_key = deliveries[agent_terminal]
    FutureKeyTerminal.install_from_key_block(sealed_state(config, environ), delivered.key_block,
                                             transport_key, delivered.initial_key_id).close()
    write_pin(sealed_state(config, environ, path=config.supervisor_pin_file),
              BENCH_SUPERVISOR_PIN)
    # The card stays on the reader between sales: without new_tap_per_sale=False each sale would
    # wait for it to be lifted and placed again, i.e. for pcscd's presence poll (measured below).
    async with running_agent(config, environ=environ, new_tap_per_sale=False) as agent:
        for _ in range(WARMUP_SALES):
            await agent.sale(SALE_AMOUNT_CENTS)

        async def sale() -> None:
            outcome = await agent.sale(SALE_AMOUNT_CENTS)
            assert outcome.status == "approved", outcome.lines
        results["present_to_answer"] = percentiles_ms(await _timed(sale, sales))

        placed = []
        for _ in range(placements):
            card.remove()
            wait_reader_state(READER_0, present=False)
            waiting = asyncio.create_task(agent.sale(SALE_AMOUNT_CENTS))
            await asyncio.sleep(0)          # let the agent start waiting for the card
            started = time.perf_counter()
            card.insert()
            outcome = await waiting
            placed.append(time.perf_counter() - started)
            assert outcome.status == "approved", outcome.lines
        results["place_to_answer"] = percentiles_ms(placed)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sales", type=int, default=200)
    parser.add_argument("--placements", type=int, default=30)
    parser.add_argument("--output", type=Path, default=Path("bench-tap-results.json"))
    args = parser.parse_args()
    results = asyncio.run(run(args.sales, args.placements, args.output))
    for name in ("get_uid", "purchase", "present_to_answer", "place_to_answer"):
        row = results[name]
        print(f"{name:<18} n={row['n']:<4} p50 {row['p50_ms']:8.2f} ms   p99 {row['p99_ms']:8.2f} ms")
    print(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
