"""How fast the HSM verifies DUKPT request MACs: the cost every authorization pays.

    python -m hsm.bench_mac [--requests N] [--terminals T] [--softhsm] [--output PATH]

Terminals send in turn, each with its counter increasing as a real one does (1, 2, 3, ...), so
the host's DUKPT cache works as in production; one warm-up request per terminal is not timed.
Beside the backends, the same run times a bare `cryptography` AES-CMAC of the same bytes under a
fixed key (a new CMAC object per call) plus the truncated comparison: the floor no backend can
beat. The software backend always runs; the PKCS#11 one runs on the token named by the
HDFPAY_PKCS11_* variables, or on a temporary SoftHSM2 token with --softhsm.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import algorithms

from hsm import dukpt, key_blocks
from hsm.interface import DUKPT_MAC_BYTES, Hsm, KeyUsage

DEFAULT_REQUESTS = 20_000
DEFAULT_TERMINALS = 50
DATA_BYTES = 256                     # a request body with method, path and KSN
KEK_BYTES = 32
BDK_ALIAS = "bench/bdk"
KBPK_ALIAS = "bench/kbpk"
NS_PER_US = 1_000
PERCENTILES = 100                    # statistics.quantiles cut points: 1 % steps


def traffic(bdk: bytes, terminals: int, requests: int,
            data: bytes) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    """(warm-up, timed) lists of (KSN, request MAC), terminals taking turns, as they MAC."""
    initial_key_ids = [secrets.token_bytes(8) for _ in range(terminals)]
    initial_keys = {key_id: dukpt.derive_initial_key(bdk, key_id) for key_id in initial_key_ids}
    counters = dict.fromkeys(initial_key_ids, 0)
    sequence = []
    for number in range(terminals + requests):
        initial_key_id = initial_key_ids[number % terminals]
        counters[initial_key_id] = dukpt.next_valid_counter(counters[initial_key_id])
        ksn = dukpt.build_ksn(initial_key_id, counters[initial_key_id])
        key = dukpt.derive_working_key(initial_keys[initial_key_id], ksn,
                                       dukpt.KeyUsage.MAC_GENERATION)
        sequence.append((ksn, _cmac(key, data)[:DUKPT_MAC_BYTES]))
    return sequence[:terminals], sequence[terminals:]


def measure(call: Callable[[bytes, bytes], None], sequence: list[tuple[bytes, bytes]]) -> dict:
    latencies = []
    started = time.perf_counter_ns()
    for ksn, mac in sequence:
        before = time.perf_counter_ns()
        call(ksn, mac)
        latencies.append(time.perf_counter_ns() - before)
    elapsed_ns = time.perf_counter_ns() - started
    cuts = statistics.quantiles(latencies, n=PERCENTILES)
    return {"verifications_per_second": round(len(sequence) * 1e9 / elapsed_ns),
            "p50_us": round(cuts[49] / NS_PER_US, 1), "p99_us": round(cuts[98] / NS_PER_US, 1),
            "mean_us": round(statistics.fmean(latencies) / NS_PER_US, 1),
            "requests": len(sequence)}


def bench_backend(hsm: Hsm, bdk: bytes, data: bytes, warm_up: list, timed: list) -> dict:
    """Load the known BDK through a TR-31 block, time verifications, remove the bench keys."""
    _, kbpk = hsm.create_transport_key(KBPK_ALIAS)
    try:
        block = key_blocks.wrap(kbpk, KeyUsage.BDK, "X", bdk)
        hsm.import_key_block(BDK_ALIAS, block, KBPK_ALIAS)
        try:
            def verify(ksn: bytes, mac: bytes) -> None:
                hsm.verify_dukpt_request_mac(BDK_ALIAS, ksn, data, mac)
            for ksn, mac in warm_up:
                verify(ksn, mac)
            return measure(verify, timed)
        finally:
            hsm.destroy_key(BDK_ALIAS)
    finally:
        hsm.destroy_key(KBPK_ALIAS)


def baseline(data: bytes, timed: list) -> dict:
    key = secrets.token_bytes(16)
    expected = _cmac(key, data)[:DUKPT_MAC_BYTES]

    def verify(ksn: bytes, mac: bytes) -> None:
        if not hmac.compare_digest(_cmac(key, data)[:DUKPT_MAC_BYTES], expected):
            raise AssertionError("baseline CMAC changed")
    return measure(verify, timed)


def _cmac(key: bytes, data: bytes) -> bytes:
    mac = cmac.CMAC(algorithms.AES(key))
    mac.update(data)
    return mac.finalize()


def _software(workdir: Path) -> Hsm:
    from hsm.software_backend import SoftwareHsm

    kek = workdir / "bench.kek"
    kek.touch(mode=0o600)
    kek.write_bytes(secrets.token_bytes(KEK_BYTES))
    return SoftwareHsm(workdir / "bench-keystore.json", kek_file=kek, create=True)


def _pkcs11(workdir: Path, softhsm: bool) -> Hsm | None:
    from hsm import pkcs11_backend, softhsm_token

    environment: dict[str, str] = dict(os.environ)
    if softhsm:
        token = softhsm_token.create_token(workdir / "softhsm", "hdfpay-bench")
        os.environ[softhsm_token.CONFIG_VARIABLE] = token[softhsm_token.CONFIG_VARIABLE]
        environment.update(token)
    elif not environment.get(pkcs11_backend.PIN_VARIABLE):
        return None
    return pkcs11_backend.Pkcs11Hsm(environment)


def _versions() -> dict:
    found = {"python": platform.python_version(), "machine": platform.machine(),
             "cpus": os.cpu_count()}
    for package in ("cryptography", "python-pkcs11", "psec"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS)
    parser.add_argument("--terminals", type=int, default=DEFAULT_TERMINALS)
    parser.add_argument("--softhsm", action="store_true",
                        help="run the PKCS#11 backend on a temporary SoftHSM2 token")
    parser.add_argument("--output", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    bdk, data = secrets.token_bytes(16), secrets.token_bytes(DATA_BYTES)
    warm_up, timed = traffic(bdk, args.terminals, args.requests, data)
    results = {"baseline_cryptography_cmac": baseline(data, timed)}
    with tempfile.TemporaryDirectory(prefix="hdfpay-bench-mac-") as workdir:
        backends = {"software": _software(Path(workdir)),
                    "pkcs11": _pkcs11(Path(workdir), args.softhsm)}
        for name, hsm in backends.items():
            if hsm is not None:
                try:
                    results[name] = bench_backend(hsm, bdk, data, warm_up, timed)
                finally:
                    hsm.close()
    report = {"benchmark": "DUKPT request MAC verification, one thread",
              "terminals": args.terminals, "data_bytes": DATA_BYTES, "results": results,
              "environment": _versions()}
    print(f"{'':30} {'verif/s':>10} {'p50 µs':>8} {'p99 µs':>8}")
    for name, figures in results.items():
        print(f"{name:30} {figures['verifications_per_second']:>10} {figures['p50_us']:>8}"
              f" {figures['p99_us']:>8}")
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
