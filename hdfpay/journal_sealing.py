"""Sealing the journal and checking its seals: the ledger's rows and seals
(ledger/journal_seals.py) under the HSM's HMAC-SHA-256 key (JOURNAL_SEAL_KEY_ALIAS). Here, in
the composition root, because it needs both bottom rooms.

What a seal gives: whoever can write the tables but cannot use the key (the database's owner,
a restored dump, a superuser with the triggers off) cannot change, insert or delete a sealed
row, nor alter, forge or remove a seal in the middle of a stream, without `hdfpay check` (the
transfers) or `hdfpay audit verify` (the audit trail) saying where.

What it does not give, the window: rows committed after the last seal are protected only by the
tables' triggers (and the audit trail by its unkeyed chain) until the next seal, every few
minutes (deploy/systemd/hdfpay-seal.timer). And a database alone cannot show that its last
seals were removed: every run prints the last seal's MAC of each stream (into the timer's
journal, outside the database); `--expect-seal` checks later that it is still there, as
`--expect-head` does for the audit chain.

The key is made in the HSM by the first seal (audited); once seals exist, a missing key is an
error, never a reason to make a new one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import asyncpg

from hsm.interface import Hsm, HsmError, KeyInfo, KeyUsage, UnknownKey, VerificationFailed
from hsm.key_aliases import JOURNAL_SEAL_KEY_ALIAS
from ledger import journal_seals
from ledger.audit import append_audit
from ledger.journal_seals import (HORIZON_WAIT_MAX_MS, SEAL_MAX_ROWS, STREAMS, HorizonNotReached,
                                  Seal)


class SealingRefused(Exception):
    """Sealing cannot run (another sealer, a missing or wrong key); nothing was sealed."""


@dataclass(frozen=True)
class SealRun:
    made: tuple[Seal, ...]
    last: dict[str, Seal | None]
    not_ready: tuple[str, ...]          # streams whose horizon was not reached, and why
    key_created: KeyInfo | None = None


@dataclass(frozen=True)
class SealReport:
    stream: str
    seals: int
    last: Seal | None
    unsealed_rows: int
    problems: tuple[str, ...]

    @property
    def intact(self) -> bool:
        return not self.problems


async def seal_journal(conn: asyncpg.Connection, hsm: Hsm, *, actor: str,
                       key_alias: str = JOURNAL_SEAL_KEY_ALIAS, max_rows: int = SEAL_MAX_ROWS,
                       wait_max_ms: int = HORIZON_WAIT_MAX_MS) -> SealRun:
    """Seal what each stream committed since its last seal, up to its horizon, in seals of at
    most `max_rows` rows. Idempotent: with nothing new, nothing is written."""
    async with journal_seals.sole_sealer(conn) as alone:
        if not alone:
            raise SealingRefused("another 'hdfpay ledger seal' is running: nothing sealed")
        key_created = await _seal_key(conn, hsm, key_alias, actor)
        made: list[Seal] = []
        not_ready: list[str] = []
        for stream in STREAMS:
            try:
                horizon = await journal_seals.sealable_horizon(conn, stream,
                                                               wait_max_ms=wait_max_ms)
            except HorizonNotReached as reason:
                not_ready.append(f"{stream}: {reason}")
                continue
            while (seal := await _seal_once(conn, hsm, stream, horizon, key_alias, max_rows)):
                made.append(seal)
        last = {stream: await journal_seals.last_seal(conn, stream) for stream in STREAMS}
    return SealRun(tuple(made), last, tuple(not_ready), key_created)


async def _seal_once(conn: asyncpg.Connection, hsm: Hsm, stream: str, horizon: int,
                     key_alias: str, max_rows: int) -> Seal | None:
    # Begun after the horizon was reached: the snapshot sees every row up to it.
    async with conn.transaction(isolation="repeatable_read"):
        draft = await journal_seals.draft_next_seal(conn, stream, horizon, key_alias=key_alias,
                                                    max_rows=max_rows)
        if draft is None:
            return None
        seal = dataclasses.replace(draft, mac=hsm.hmac_sha256(key_alias, draft.message()))
        await journal_seals.insert_seal(conn, seal)
    return seal


async def _seal_key(conn: asyncpg.Connection, hsm: Hsm, alias: str, actor: str) -> KeyInfo | None:
    """The key, made (and audited) at the first seal; None if it was there already."""
    try:
        info = hsm.key_info(alias)
    except UnknownKey:
        if await journal_seals.seal_count(conn):
            raise SealingRefused(
                f"the journal's seals were made with key {alias}, which this HSM does not hold:"
                " check HDFPAY_HSM_BACKEND and its settings (a new key would not verify the"
                " seals made before)") from None
        async with conn.transaction():
            info = hsm.generate_key(alias, KeyUsage.HMAC)
            try:
                await append_audit(conn, actor=actor, action="key.create", subject=f"key:{alias}",
                                   after={"usage": info.usage.value, "kcv": info.kcv,
                                          "purpose": "journal seals (HMAC-SHA-256)"})
            except BaseException:
                hsm.destroy_key(alias)
                raise
        return info
    if info.usage is not KeyUsage.HMAC:
        raise SealingRefused(f"key {alias} has usage {info.usage.value}, not an HMAC key"
                             f" ({KeyUsage.HMAC.value}): nothing sealed")
    return None


async def verify_seals(conn: asyncpg.Connection, hsm: Hsm | None, stream: str,
                       expect_mac: bytes | None = None) -> SealReport:
    """Every row up to the last seal against its seal, every seal's MAC under the HSM's key,
    and `expect_mac` (a seal's MAC published earlier) still in the stream. `hsm` may be None
    only while the database holds no seal at all."""
    rows = await journal_seals.check_rows(conn, stream)
    problems = list(rows.problems)
    if rows.seals and hsm is None:
        raise SealingRefused(f"the {stream} seals are checked with the HSM's key: configure the"
                             " HSM (HDFPAY_HSM_BACKEND and its settings)")
    for seal in rows.seals:
        problem = _mac_problem(hsm, seal)
        if problem:
            problems.append(problem)
    if expect_mac is not None and expect_mac not in {seal.mac for seal in rows.seals}:
        problems.append(f"the {stream} seal published earlier (MAC {expect_mac.hex()}) is no"
                        " longer in the database: seals were removed or rewritten since")
    last = rows.seals[-1] if rows.seals else None
    return SealReport(stream, len(rows.seals), last, rows.unsealed_rows,
                      tuple(problems[:journal_seals.MAX_PROBLEMS]))


def _mac_problem(hsm: Hsm, seal: Seal) -> str | None:
    try:
        hsm.verify_hmac_sha256(seal.key_alias, seal.message(), seal.mac)
    except VerificationFailed:
        return (f"{seal.describe()}: its MAC does not verify under key {seal.key_alias}: the"
                " seal was altered or forged")
    except UnknownKey:
        return (f"{seal.describe()}: made with key {seal.key_alias}, which this HSM does not"
                " hold (wrong HSM, or the seal was altered)")
    except HsmError as error:
        return f"{seal.describe()}: its MAC cannot be checked ({error}): the seal was altered"
    return None
