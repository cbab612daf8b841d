"""`hdfpay fuzz --messages N`: generated and mutated terminal messages against the codec and a
real server on a throwaway database.

Why: the parser and the endpoint face whatever a broken or hostile terminal sends. Each message
is a valid one (purchase, reversal, refund, batch close) or a mutation of one (byte flips,
truncations, type swaps, huge numbers, duplicate keys, unicode, wrong MACs). The codec must refuse
with ProtocolError or accept, nothing else; the server must answer every request within
ANSWER_TIMEOUT_S in JSON, MAC'd whenever the MAC verified, log no error, and move money only for
messages that decode and verify: afterwards the ledger's PURCHASE, REVERSAL and REFUND totals
equal what the answers to those messages approved, and the ledger balances. Inputs that broke a
rule are written to the corpus directory (kept beside the tests: tests/fuzz_corpus/).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import random
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp

from backoffice.provisioning import new_bdk, provision_unkeyed_terminals
from hdfpay.config import Settings
from hdfpay.server import running_server
from hsm.software_backend import SoftwareHsm
from ledger.clock import pin_clock
from ledger.database import connection
from ledger.demo_region import card_uid, seed_demo_region
from ledger.embedded import throwaway_cluster, throwaway_workdir
from ledger.invariants import ledger_violations
from ledger.migrate import migrate
from terminal_protocol.codec import MAX_REQUEST_BODY_BYTES, ProtocolError, decode_request
from terminal_protocol.ksn_counter import MemoryCounter
from terminal_protocol.terminal_keys import ForgedResponse, TerminalKeys
from terminal_protocol.transport import KSN_HEADER, MAC_HEADER, TERMINAL_ID_HEADER, TERMINAL_PATH

ANSWER_TIMEOUT_S = 10.0              # a request unanswered by then is a hang
FUZZ_TERMINALS = 4                   # concurrent terminals, one message in flight each
FUZZ_BENEFICIARIES = 200
FUZZ_SCHOOL_YEAR = 2026
FUZZ_BUSINESS_TIME = dt.datetime(2026, 11, 26, 10, 0, tzinfo=ZoneInfo("Europe/Paris"))
PURCHASE_MAX_CENTS = 60_00
CORPUS_KEEP_PER_KIND = 3             # refused-as-expected inputs kept per mutation kind
HUGE_NUMBERS = [2**63, -2**63 - 1, 10**30, 1e308, -0.0, 2**53 + 1, 99999999999999999999]
UNICODE_SAMPLES = ["é", "\u202e", "\ud83d\ude00", "\u0000", "\ufeff", "Ａ", "\u0301", "\\ud800"]
MUTATIONS = ["flip", "truncate", "type_swap", "huge_number", "duplicate_key", "unicode",
             "wrong_mac", "extra_field", "drop_field", "nesting", "whitespace"]
VALID_SHARE = 0.3                    # of messages sent unmutated
log = logging.getLogger("hdfpay.fuzz")


@dataclasses.dataclass(frozen=True)
class FuzzOptions:
    messages: int
    seed: int = 15
    output: str = "fuzz-results.json"
    corpus: str | None = None


@dataclasses.dataclass
class Tally:
    sent: int = 0
    valid: int = 0
    crashes: list = dataclasses.field(default_factory=list)
    hangs: int = 0
    codec_crashes: int = 0
    by_kind: dict = dataclasses.field(default_factory=dict)
    approved: dict = dataclasses.field(default_factory=dict)   # (terminal, request id) -> (type, cents)
    kept: dict = dataclasses.field(default_factory=dict)


class ErrorRecords(logging.Handler):
    """Every error-level record of the server, in process: an unhandled exception is one."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class MessageMaker:
    """Valid messages of one terminal, and mutations of them."""

    def __init__(self, rng: random.Random, terminal: str) -> None:
        self.rng = rng
        self.terminal = terminal
        self.number = 0
        self.purchases: list[str] = []
        self.rrns: list[tuple[str, str]] = []      # (rrn, card uid hex)

    def _request_id(self) -> str:
        self.number += 1
        return f"fz-{self.terminal}-{self.number:08d}-{self.rng.randrange(16**6):06x}"

    def valid(self) -> dict:
        rng, kind = self.rng, self.rng.random()
        base = {"v": 1, "request_id": self._request_id(), "stan": rng.randrange(1_000_000)}
        if kind < 0.6 or not self.purchases:
            return {**base, "type": "purchase",
                    "card_uid": card_uid(rng.randint(1, FUZZ_BENEFICIARIES + 5)).hex().upper(),
                    "amount_cents": rng.randint(1, PURCHASE_MAX_CENTS),
                    "local_time": "2026-11-26T10:%02d:%02d" % (rng.randrange(60), rng.randrange(60)),
                    "partial_ok": rng.random() < 0.5}
        if kind < 0.75:
            return {**base, "type": "reversal", "original_request_id": rng.choice(self.purchases)}
        if kind < 0.95 and self.rrns:
            rrn, uid = rng.choice(self.rrns)
            return {**base, "type": "refund", "original_rrn": rrn,
                    "amount_cents": rng.randint(1, PURCHASE_MAX_CENTS // 4), "card_uid": uid}
        return {**base, "type": "batch_close", "totals": {"purchases_count": rng.randrange(5)}}

    def remember(self, message: dict, answer: dict) -> None:
        if message.get("type") == "purchase" and isinstance(message.get("request_id"), str):
            self.purchases.append(message["request_id"])
            if answer.get("approved_cents") and answer.get("rrn"):
                self.rrns.append((answer["rrn"], message["card_uid"]))

    def mutate(self, message: dict) -> tuple[str, bytes, bool]:
        """(mutation kind, body, whether the MAC is to be spoiled)."""
        rng = self.rng
        kind = rng.choice(MUTATIONS)
        body = json.dumps(message, separators=(",", ":")).encode()
        key = rng.choice(sorted(message))
        if kind == "flip":
            data = bytearray(body)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            return kind, bytes(data), False
        if kind == "truncate":
            return kind, body[:rng.randrange(len(body))], False
        if kind == "type_swap":
            swapped = rng.choice([None, True, "1", 1, 1.5, [], {}, [message[key]], str(message[key])])
            return kind, _encode({**message, key: swapped}), False
        if kind == "huge_number":
            return kind, _encode({**message, key: rng.choice(HUGE_NUMBERS)}), False
        if kind == "duplicate_key":
            other = rng.choice([message[key], 1, "x", 10**9])
            return kind, body[:-1] + b"," + json.dumps({key: other})[1:-1].encode() + b"}", False
        if kind == "unicode":
            text = str(message[key])
            at = rng.randrange(len(text) + 1)
            value = text[:at] + rng.choice(UNICODE_SAMPLES) + text[at:]
            raw = json.dumps({**message, key: value}, ensure_ascii=rng.random() < 0.5)
            return kind, raw.encode("utf-8", "surrogatepass"), False
        if kind == "wrong_mac":
            return kind, body, True
        if kind == "extra_field":
            return kind, _encode({**message, rng.choice(["pin", "V", "type ", "amount"]): 1}), False
        if kind == "drop_field":
            return kind, _encode({k: v for k, v in message.items() if k != key}), False
        if kind == "nesting":
            depth = rng.choice([10, 1_000, 5_000])
            return kind, (b"[" * depth + b"]" * depth)[:MAX_REQUEST_BODY_BYTES * 2], False
        return kind, b" \t\n" + body.replace(b",", b" , ") + b"\n", False


def _encode(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def check_codec(body: bytes) -> tuple[bool, str | None]:
    """(decodes, crash): the codec accepts or raises ProtocolError, nothing else."""
    try:
        decode_request(body)
        return True, None
    except ProtocolError:
        return False, None
    except Exception as exc:            # noqa: BLE001 - that is what the fuzzer looks for
        return False, f"{type(exc).__name__}: {exc}"


def _keep(tally: Tally, corpus: Path | None, kind: str, body: bytes, reason: str) -> None:
    if corpus is None:
        return
    count = tally.kept.get((kind, reason), 0)
    if reason == "expected" and count >= CORPUS_KEEP_PER_KIND:
        return
    tally.kept[(kind, reason)] = count + 1
    corpus.mkdir(parents=True, exist_ok=True)
    (corpus / f"{reason}-{kind}-{count:03d}.json").write_bytes(body)


async def _terminal_worker(session: aiohttp.ClientSession, url: str, terminal: str,
                           keys: TerminalKeys, maker: MessageMaker, count: int, tally: Tally,
                           corpus: Path | None) -> None:
    for _ in range(count):
        message = maker.valid()
        if maker.rng.random() < VALID_SHARE:
            kind, body, spoil = "valid", _encode(message), False
        else:
            kind, body, spoil = maker.mutate(message)
        decodes, codec_crash = check_codec(body)
        if codec_crash:
            tally.codec_crashes += 1
            tally.crashes.append({"where": "codec", "kind": kind, "error": codec_crash})
            _keep(tally, corpus, kind, body, "crash")
        ksn, mac = keys.sign_request("POST", TERMINAL_PATH, body)
        if spoil:
            mac = bytes([mac[0] ^ 0x01]) + mac[1:]
        headers = {TERMINAL_ID_HEADER: terminal, KSN_HEADER: ksn.hex().upper(),
                   MAC_HEADER: mac.hex().upper(), "Content-Type": "application/json"}
        tally.sent += 1
        tally.by_kind[kind] = tally.by_kind.get(kind, 0) + 1
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                async with session.post(url + TERMINAL_PATH, data=body, headers=headers) as reply:
                    status, raw = reply.status, await reply.read()
                    answer_mac = reply.headers.get(MAC_HEADER)
        except TimeoutError:
            tally.hangs += 1
            _keep(tally, corpus, kind, body, "hang")
            continue
        problem = _judge(keys, ksn, spoil, decodes, len(body), status, raw, answer_mac)
        if problem:
            tally.crashes.append({"where": "server", "kind": kind, "status": status,
                                  "problem": problem})
            _keep(tally, corpus, kind, body, "crash")
            continue
        answer = json.loads(raw)
        if decodes and not spoil:
            tally.valid += 1
            maker.remember(json.loads(body), answer)
            if answer.get("approved_cents"):
                tally.approved[(terminal, answer["request_id"])] = (answer["type"],
                                                                    answer["approved_cents"])
        else:
            _keep(tally, corpus, kind, body, "expected")


def _judge(keys: TerminalKeys, ksn: bytes, spoiled: bool, decodes: bool, body_bytes: int,
           status: int, raw: bytes, answer_mac: str | None) -> str | None:
    """What is wrong with this answer, if anything."""
    try:
        answer = json.loads(raw)
    except ValueError:
        return "an answer that is not JSON"
    if not isinstance(answer, dict) or "rc" not in answer:
        return "an answer without rc"
    if body_bytes > MAX_REQUEST_BODY_BYTES:      # refused before authentication, as documented
        return None if status == 413 else f"an oversized body answered {status}"
    if spoiled:
        return None if (status, answer["rc"]) == (401, "63") else f"a wrong MAC answered {status}"
    if status == 503 and answer_mac is None and answer["rc"] == "91":
        return None                      # the HSM failing to MAC: documented, MAC-less 91
    try:
        keys.check_response(ksn, status, raw, bytes.fromhex(answer_mac) if answer_mac else None)
    except (ForgedResponse, ValueError):
        return f"an authenticated request answered {status} without a valid MAC"
    if status == 500:
        return "a 500 (rc 96)"
    if not decodes and (answer["rc"] != "30" or answer.get("approved_cents")):
        return f"a message the codec refuses answered rc {answer['rc']}"
    return None


async def _ledger_moves(conn) -> dict[str, int]:
    rows = await conn.fetch("SELECT code, sum(amount_cents) AS cents FROM transfers"
                            " WHERE code IN ('PURCHASE', 'REVERSAL', 'REFUND') GROUP BY code")
    return {r["code"]: int(r["cents"]) for r in rows}


async def run_fuzz_against(url: str, keys_by_terminal: dict[str, TerminalKeys], options: FuzzOptions,
                           dsn: str) -> dict:
    """The server phase on a running server; returns the results (see run_fuzz)."""
    rng = random.Random(options.seed)
    corpus = Path(options.corpus) if options.corpus else None
    tally = Tally()
    errors = ErrorRecords()
    logging.getLogger().addHandler(errors)
    async with connection(dsn) as conn:
        before = await _ledger_moves(conn)
    terminals = sorted(keys_by_terminal)
    share = [options.messages // len(terminals) + (i < options.messages % len(terminals))
             for i in range(len(terminals))]
    started = time.perf_counter()
    try:
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(
                _terminal_worker(session, url, t, keys_by_terminal[t],
                                 MessageMaker(random.Random(rng.random()), t), n, tally, corpus)
                for t, n in zip(terminals, share)))
    finally:
        logging.getLogger().removeHandler(errors)
    seconds = time.perf_counter() - started
    async with connection(dsn) as conn:
        after = await _ledger_moves(conn)
        violations = await ledger_violations(conn)
    moved = {code: after.get(code, 0) - before.get(code, 0) for code in ("PURCHASE", "REVERSAL", "REFUND")}
    expected = {code: sum(c for (t, c) in tally.approved.values() if t == code.lower())
                for code in moved}
    unexplained = sum(abs(moved[c] - expected[c]) for c in moved)
    for record in errors.records:
        tally.crashes.append({"where": "server log", "logger": record.name,
                              "message": record.getMessage()[:200]})
    return {"messages": tally.sent, "valid_messages": tally.valid, "seconds": round(seconds, 3),
            "messages_per_s": round(tally.sent / seconds, 1) if seconds else None,
            "crashes": len(tally.crashes), "codec_crashes": tally.codec_crashes,
            "hangs": tally.hangs, "debits_from_invalid_cents": unexplained,
            "ledger_moves_cents": moved, "ledger_violations": [list(v) for v in violations],
            "by_kind": tally.by_kind, "crash_samples": tally.crashes[:20],
            "answer_timeout_s": ANSWER_TIMEOUT_S, "seed": options.seed}


def passed(results: dict) -> bool:
    return (results["crashes"] == 0 and results["hangs"] == 0
            and results["debits_from_invalid_cents"] == 0 and not results["ledger_violations"])


async def _fuzz(options: FuzzOptions, settings: Settings) -> dict:
    with throwaway_workdir("fuzz") as workdir:
        cluster = throwaway_cluster(workdir)
        cluster.start()
        dsn = cluster.dsn_for("postgres")
        hsm = SoftwareHsm(workdir / "keystore.json", passphrase=workdir.name, create=True)
        try:
            new_bdk(hsm)
            async with connection(dsn) as conn:
                await migrate(conn)
                await pin_clock(conn, FUZZ_BUSINESS_TIME)
                await seed_demo_region(conn, beneficiaries=FUZZ_BENEFICIARIES,
                                       school_year=FUZZ_SCHOOL_YEAR)
                deliveries = await provision_unkeyed_terminals(conn, hsm)
                active = {r["id"] for r in await conn.fetch(
                    "SELECT id FROM terminals WHERE status = 'ACTIVE'")}
            chosen = sorted(t for t in deliveries if t in active)[:FUZZ_TERMINALS]
            keys = {t: TerminalKeys.from_key_block(deliveries[t][0].key_block, deliveries[t][1],
                                                   MemoryCounter(), deliveries[t][0].initial_key_id)
                    for t in chosen}
            server_settings = dataclasses.replace(settings, database_url=None, host="127.0.0.1",
                                                  port=0)
            async with running_server(server_settings, dsn, hsm) as server:
                return await run_fuzz_against(server.url, keys, options, dsn)
        finally:
            hsm.close()


def run_fuzz(options: FuzzOptions, settings: Settings) -> int:
    """Exit code 0 when nothing broke, 1 otherwise, 2 on a bad option."""
    if options.messages < 1:
        print("hdfpay: error: fuzz needs --messages >= 1", file=sys.stderr)
        return 2
    codec_started = time.perf_counter()
    codec_results = fuzz_codec(options.messages, options.seed)
    codec_seconds = time.perf_counter() - codec_started
    results = asyncio.run(_fuzz(options, settings))
    results["codec"] = {**codec_results, "seconds": round(codec_seconds, 3),
                        "messages_per_s": round(codec_results["messages"] / codec_seconds, 1)}
    results["crashes"] += codec_results["crashes"]
    Path(options.output).write_text(json.dumps(results, indent=2) + "\n")
    print(f"codec: {codec_results['messages']} messages, {results['codec']['messages_per_s']}/s, "
          f"{codec_results['crashes']} crashes")
    print(f"server: {results['messages']} messages ({results['valid_messages']} valid) in "
          f"{results['seconds']} s, {results['messages_per_s']}/s; crashes {results['crashes']}, "
          f"hangs {results['hangs']}, debits from invalid messages "
          f"{results['debits_from_invalid_cents']} cents, ledger violations "
          f"{len(results['ledger_violations'])}; results in {options.output}")
    return 0 if passed(results) else 1


def fuzz_codec(messages: int, seed: int) -> dict:
    """The codec alone, fast: the same generator, decoded in process."""
    rng = random.Random(seed)
    maker = MessageMaker(rng, "CODEC-FUZZ")
    crashes = 0
    for _ in range(messages):
        message = maker.valid()
        _, body, _ = maker.mutate(message)
        if check_codec(body)[1]:
            crashes += 1
    return {"messages": messages, "crashes": crashes}
