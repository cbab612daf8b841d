"""The audit trail is append-only and hash-chained: tampering of any kind is found."""

from __future__ import annotations

import asyncpg
import pytest

from ledger.audit import append_audit, verify_audit


async def _three_actions(conn) -> None:
    async with conn.transaction():
        await append_audit(conn, actor="op:alice", action="card.oppose", subject="card:123",
                           before={"status": "ACTIVE"}, after={"status": "LOST"})
    await append_audit(conn, actor="op:bob", action="rights.renew", subject="beneficiary:9",
                       before=None, after={"school_year": 2026})
    await append_audit(conn, actor="op:alice", action="terminal.suspend", subject="terminal:T1",
                       before={"status": "ACTIVE"}, after={"status": "SUSPENDED"})


async def test_an_untouched_trail_verifies(conn):
    await _three_actions(conn)
    report = await verify_audit(conn)
    assert (report.intact, report.rows, report.head_id) == (True, 3, 3)


async def test_an_action_rolled_back_leaves_no_row(conn):
    with pytest.raises(RuntimeError):
        async with conn.transaction():
            await append_audit(conn, actor="op:alice", action="card.oppose", subject="card:1")
            raise RuntimeError("the change failed")
    assert (await verify_audit(conn)).rows == 0


async def test_update_delete_and_truncate_are_refused(conn):
    await _three_actions(conn)
    for statement in ("UPDATE audit_log SET actor = 'op:mallory' WHERE id = 2",
                      "DELETE FROM audit_log WHERE id = 3", "TRUNCATE audit_log"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(statement)


@pytest.mark.parametrize("tamper, finding", [
    ("UPDATE audit_log SET after = '{\"status\": \"ACTIVE\"}' WHERE id = 1", "row 1: content altered"),
    ("DELETE FROM audit_log WHERE id = 2", "row 3: expected row 2"),
    ("DELETE FROM audit_log WHERE id = 3", "the head says row 3"),
    ("UPDATE audit_log SET occurred_at = occurred_at - interval '1 day' WHERE id = 2", "row 2: content altered"),
])
async def test_tampering_is_found(conn, tamper, finding):
    await _three_actions(conn)
    await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
    await conn.execute(tamper)
    await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
    report = await verify_audit(conn)
    assert not report.intact
    assert any(problem.startswith(finding) for problem in report.problems), report.problems


async def test_the_head_only_follows_the_log(conn):
    """Resetting the head to hide rows deleted at the end needs its trigger disabled too."""
    await _three_actions(conn)
    for statement in ("UPDATE audit_head SET last_id = 2, last_hash = (SELECT row_hash FROM audit_log WHERE id = 2)",
                      "DELETE FROM audit_head", "TRUNCATE audit_head"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(statement)
    assert (await verify_audit(conn)).intact


async def test_terminal_changes_are_audited_without_key_material(conn, hsm):
    from backoffice.provisioning import add_terminal, rotate_terminal_key, set_terminal_status
    delivered = await add_terminal(conn, hsm, "AUDIT-T1", 1, actor="cli:alice")
    await set_terminal_status(conn, "AUDIT-T1", "ACTIVE", actor="cli:alice")
    rotated = await rotate_terminal_key(conn, hsm, "AUDIT-T1", actor="cli:bob")
    rows = await conn.fetch("SELECT actor, action, before, after::text AS after FROM audit_log"
                            " WHERE subject = 'terminal:AUDIT-T1' ORDER BY id")
    assert [(r["actor"], r["action"]) for r in rows] == [
        ("cli:alice", "terminal.add"), ("cli:alice", "terminal.status"),
        ("cli:bob", "terminal.rotate_key")]
    assert rotated.initial_key_id.hex().upper() in rows[2]["after"]
    assert delivered.transport_key.hex().upper() not in "".join(r["after"].upper() for r in rows)
    assert (await verify_audit(conn)).intact
