"""How long the students' personal data is kept, and the purge that enforces it (README.md,
"Personal data"). Run by the students' space every PURGE_INTERVAL of portal/housekeeping.py.

- A first-card application's photo: until its card request ends (the card is active, or the
  request rejected): then the file is deleted and the application forgets its name.
- Sessions: 2 hours; expired and revoked ones are deleted.
- "Mot de passe oublié" links: an hour; used or expired ones are deleted after a day.
- E-mails: the body once sent, the address MAIL_KEEP_SENT_DAYS after (ledger/mail_outbox.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from ledger.mail_outbox import purge_sent

RESET_LINKS_KEPT_DAYS = 1          # a used or expired link, for the support's questions


@dataclass(frozen=True)
class Purged:
    photo_files: tuple[str, ...]   # the caller deletes the files (the ledger has no disk)
    sessions: int
    reset_links: int
    mail_addresses: int


async def purge(conn: asyncpg.Connection) -> Purged:
    async with conn.transaction():
        photos = await conn.fetch(
            "WITH done AS (SELECT a.id, a.photo_file FROM card_applications a"
            "   JOIN card_requests r ON r.beneficiary_id = a.beneficiary_id"
            "  WHERE r.state IN ('ACTIVE', 'REJECTED') AND a.photo_file IS NOT NULL"
            "    FOR UPDATE OF a)"
            " UPDATE card_applications a SET photo_file = NULL, photo_bytes = NULL,"
            " photo_width_px = NULL, photo_height_px = NULL FROM done WHERE a.id = done.id"
            " RETURNING done.photo_file AS old")
        sessions = await conn.execute(
            "DELETE FROM student_sessions WHERE revoked OR expires_at <= business_now()")
        links = await conn.execute(
            "DELETE FROM student_password_resets WHERE (used_at IS NOT NULL OR expires_at <="
            " business_now()) AND created_at < business_now() - $1 * interval '1 day'",
            RESET_LINKS_KEPT_DAYS)
        addresses = await purge_sent(conn)
    return Purged(tuple(r["old"] for r in photos), int(sessions.split()[-1]),
                  int(links.split()[-1]), addresses)
