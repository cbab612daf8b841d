"""An operator beside the terminals of `hdfpay chaos`: audited actions one after another, so that
the audit trail's hash chain grows through every fault, not only the wallets.

Each action is a row appended by append_audit() (as the operator API's role) in its own
transaction through the multi-host DSN. A commit that was acknowledged must be in the trail on
whichever node is the primary at the end, once, with what it said; a commit whose answer was lost
(timeout, connection gone) may or may not be there, as a terminal's lost answer. `hdfpay audit
verify` then recomputes the chain over all of it.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from ledger import roles
from ledger.audit import append_audit
from ledger.database import connect_each_host
from ledger.roles import role_dsn

AUDIT_ACTOR = "chaos-operator"
AUDIT_ACTION = "chaos.probe"
AUDIT_SUBJECT = "chaos"
AUDIT_INTERVAL_MS = 250
# A commit waits for the synchronous standby: past this, its outcome is unknown.
AUDIT_COMMIT_TIMEOUT_S = 5.0
# No primary to be found (InternalClientError: no host accepts writes), the connection lost,
# the commit not acknowledged in time: the action's outcome is unknown.
LOST_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
               OSError, TimeoutError)


class AuditWriter:
    def __init__(self, dsn: str) -> None:
        self.dsn = role_dsn(dsn, roles.OPS)
        self.acknowledged: dict[int, int] = {}     # audit id -> the action's number
        self.unknown = 0                           # actions whose commit was not acknowledged

    async def run(self, stop: asyncio.Event) -> None:
        conn: asyncpg.Connection | None = None
        number = 0
        try:
            while not stop.is_set():
                number += 1
                try:
                    async with asyncio.timeout(AUDIT_COMMIT_TIMEOUT_S):
                        if conn is None:
                            conn = await connect_each_host(self.dsn)
                        async with conn.transaction():
                            audit_id = await append_audit(
                                conn, actor=AUDIT_ACTOR, action=AUDIT_ACTION,
                                subject=AUDIT_SUBJECT, after={"n": number})
                    self.acknowledged[audit_id] = number
                except LOST_ERRORS:
                    self.unknown += 1
                    if conn is not None:
                        conn.terminate()      # its state is unknown: a fresh one next time
                        conn = None
                await asyncio.sleep(AUDIT_INTERVAL_MS / 1000)
        finally:
            if conn is not None:
                with contextlib.suppress(*LOST_ERRORS):
                    await conn.close(timeout=AUDIT_COMMIT_TIMEOUT_S)


async def audit_problems(conn: asyncpg.Connection, writer: AuditWriter) -> tuple[dict, list[str]]:
    """Every acknowledged action in the trail, under its id, saying its own number."""
    rows = {r["id"]: r["n"] for r in await conn.fetch(
        "SELECT id, (after->>'n')::bigint AS n FROM audit_log WHERE action = $1", AUDIT_ACTION)}
    lost = [f"audit row {audit_id} (action {number}) acknowledged, not in the trail"
            for audit_id, number in writer.acknowledged.items() if rows.get(audit_id) != number]
    repeated = len(rows) - len(set(rows.values()))
    problems = lost + ([f"{repeated} audited actions in the trail twice"] if repeated else [])
    return {"audit_acknowledged": len(writer.acknowledged), "audit_unknown": writer.unknown,
            "audit_rows": len(rows)}, problems
