"""Terminal keys: BDKs, and each terminal's AES-DUKPT initial key delivered as a TR-31 block.

A new terminal gets a transport key (KBPK) shown once to its installer, and its initial key
wrapped under it; the KBPK stays in the HSM so that later keys (rotation) reach the terminal
wrapped under it too. The database records which initial key ids belong to which terminal; the
authorization path checks it with the KSN counter.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import asyncpg

from hsm.key_aliases import BDK_ID_BYTES, bdk_alias, bdk_id_of, kbpk_alias
from hsm.interface import Hsm, HsmError, KeyInfo, KeyUsage, UnknownKey
from ledger import terminals
from ledger.audit import append_audit

# The audit trail's name for provisioning done by the program itself (seeding, tests).
SYSTEM_ACTOR = "system:hdfpay"


class ProvisioningError(RuntimeError):
    """An operator asked for something the terminal's state does not allow; says why."""


@dataclass(frozen=True)
class DeliveredKey:
    terminal_id: str
    initial_key_id: bytes
    key_block: str                       # TR-31 version D, usage B1, under the terminal's KBPK
    kbpk: KeyInfo
    # Only when a new KBPK was made: shown once, never stored, never in a repr.
    transport_key: bytes | None = field(default=None, repr=False)


def current_bdk(hsm: Hsm) -> KeyInfo:
    """The newest BDK: new terminals and rotations use it."""
    bdks = [k for k in hsm.list_keys() if k.usage is KeyUsage.BDK]
    if not bdks:
        raise ProvisioningError("the HSM holds no BDK: run 'hdfpay keys new-bdk' first")
    return max(bdks, key=lambda k: k.created_at)


def new_bdk(hsm: Hsm) -> KeyInfo:
    """A new BDK, unaudited: for throwaway regions (demo, benchmarks, tests); an operator's
    goes through create_bdk."""
    taken = {k.alias for k in hsm.list_keys()}
    while True:
        alias = bdk_alias(os.urandom(BDK_ID_BYTES))
        if alias not in taken:
            return hsm.generate_key(alias, KeyUsage.BDK)


async def create_bdk(conn: asyncpg.Connection, hsm: Hsm, *, actor: str) -> KeyInfo:
    """A new BDK (key rotation), audited with its alias and KCV; a key whose audit row could
    not be written is destroyed before any terminal gets a key from it."""
    info = new_bdk(hsm)
    try:
        await append_audit(conn, actor=actor, action="key.new_bdk", subject=f"key:{info.alias}",
                           after={"usage": info.usage.value, "kcv": info.kcv})
    except BaseException:
        hsm.destroy_key(info.alias)
        raise
    return info


async def add_terminal(conn: asyncpg.Connection, hsm: Hsm, terminal_id: str,
                       partner_id: int, *, actor: str = SYSTEM_ACTOR) -> DeliveredKey:
    """A PENDING terminal of the partner, with a new transport key and its first initial key."""
    async with conn.transaction():
        if not await terminals.partner_exists(conn, partner_id):
            raise ProvisioningError(f"no partner {partner_id}")
        if not await terminals.insert_terminal(conn, terminal_id, partner_id):
            raise ProvisioningError(f"terminal {terminal_id} already exists (use 'rotate')")
        _destroy_stale(hsm, kbpk_alias(terminal_id))
        kbpk, transport_key = hsm.create_transport_key(kbpk_alias(terminal_id))
        delivered = await _deliver_initial_key(conn, hsm, terminal_id, kbpk)
        await _audit_delivery(conn, actor, "terminal.add", delivered, {"partner_id": partner_id})
    return dataclasses.replace(delivered, transport_key=transport_key)


async def rotate_terminal_key(conn: asyncpg.Connection, hsm: Hsm, terminal_id: str, *,
                              actor: str = SYSTEM_ACTOR) -> DeliveredKey:
    """A new initial key under the current BDK, wrapped under the terminal's KBPK. The old key
    keeps working until the terminal's first message under the new one: no downtime. A terminal
    whose KBPK this HSM does not hold (or can no longer wrap with) gets a new transport key,
    shown once like at `add`."""
    try:
        # The HSM's work before any lock: an exported block that is never recorded is harmless.
        delivered = await _export_initial_key(conn, hsm, terminal_id,
                                              hsm.key_info(kbpk_alias(terminal_id)))
        async with conn.transaction():
            await _lock_rotatable(conn, terminal_id)
            await terminals.record_initial_key(conn, delivered.initial_key_id, terminal_id)
            await _audit_delivery(conn, actor, "terminal.rotate_key", delivered, {})
            return delivered
    except HsmError:
        pass   # rolled back: no KBPK here, or (PKCS#11) its clear value is no longer held
    async with conn.transaction():
        await _lock_rotatable(conn, terminal_id)
        _destroy_stale(hsm, kbpk_alias(terminal_id))
        kbpk, transport_key = hsm.create_transport_key(kbpk_alias(terminal_id))
        delivered = await _deliver_initial_key(conn, hsm, terminal_id, kbpk)
        await _audit_delivery(conn, actor, "terminal.rotate_key", delivered,
                              {"new_transport_key": True})
    return dataclasses.replace(delivered, transport_key=transport_key)


async def _audit_delivery(conn: asyncpg.Connection, actor: str, action: str,
                          delivered: DeliveredKey, extra: dict) -> None:
    """Key ids and check values only: the audit trail never holds key material."""
    await append_audit(conn, actor=actor, action=action, subject=f"terminal:{delivered.terminal_id}",
                       after={"initial_key_id": delivered.initial_key_id.hex().upper(),
                              "transport_key_kcv": delivered.kbpk.kcv, **extra})


async def _lock_rotatable(conn: asyncpg.Connection, terminal_id: str) -> None:
    status = await terminals.lock_terminal_status(conn, terminal_id)
    if status is None or status == "REVOKED":
        raise ProvisioningError(f"terminal {terminal_id} is {'unknown' if status is None else 'revoked'}")


async def set_terminal_status(conn: asyncpg.Connection, terminal_id: str, status: str, *,
                              actor: str = SYSTEM_ACTOR) -> None:
    """ACTIVE (activate, resume), SUSPENDED, or REVOKED (final: declined with 58 for good)."""
    async with conn.transaction():
        before = await terminals.lock_terminal_status(conn, terminal_id)
        if before is None:
            raise ProvisioningError(f"no terminal {terminal_id}")
        await terminals.set_terminal_status(conn, terminal_id, status)
        await append_audit(conn, actor=actor, action="terminal.status",
                           subject=f"terminal:{terminal_id}", before={"status": before},
                           after={"status": status})


async def provision_unkeyed_terminals(conn: asyncpg.Connection, hsm: Hsm) -> dict[str, tuple[DeliveredKey, bytes]]:
    """Give every terminal without a key a transport key and an initial key (demo, tests,
    benchmarks: the seeded region's terminals). Returns each terminal's delivery and transport key."""
    delivered = {}
    for terminal_id in await terminals.unkeyed_terminal_ids(conn):
        async with conn.transaction():
            _destroy_stale(hsm, kbpk_alias(terminal_id))
            kbpk, transport_key = hsm.create_transport_key(kbpk_alias(terminal_id))
            delivered[terminal_id] = (await _deliver_initial_key(conn, hsm, terminal_id, kbpk),
                                      transport_key)
    return delivered


async def _deliver_initial_key(conn: asyncpg.Connection, hsm: Hsm, terminal_id: str,
                               kbpk: KeyInfo) -> DeliveredKey:
    delivered = await _export_initial_key(conn, hsm, terminal_id, kbpk)
    await terminals.record_initial_key(conn, delivered.initial_key_id, terminal_id)
    return delivered


async def _export_initial_key(conn: asyncpg.Connection, hsm: Hsm, terminal_id: str,
                              kbpk: KeyInfo) -> DeliveredKey:
    """A new initial key id (a sequence: never reused, even if not recorded) and its key block
    from the HSM; not yet recorded as the terminal's."""
    bdk = current_bdk(hsm)
    derivation_id = await terminals.next_key_derivation_id(conn)
    initial_key_id = bdk_id_of(bdk.alias) + derivation_id.to_bytes(4, "big")
    block = hsm.export_dukpt_initial_key(bdk.alias, initial_key_id, kbpk.alias)
    return DeliveredKey(terminal_id, initial_key_id, block, kbpk)


def _destroy_stale(hsm: Hsm, alias: str) -> None:
    """A transport key left by a provisioning whose database transaction did not commit."""
    try:
        hsm.destroy_key(alias)
    except UnknownKey:
        pass
