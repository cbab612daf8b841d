"""The purge of students' personal data (ledger/personal_data.py says what and when): the ledger
forgets, this deletes the photo files it names. Run by `hdfpay students purge`, every hour from
deploy/systemd/hdfpay-purge.timer: a job of its own, not a task inside the server."""

from __future__ import annotations

import logging
from pathlib import Path

import asyncpg

from ledger.personal_data import Purged, purge
from portal.photos import remove_photo

log = logging.getLogger("hdfpay.portal")


async def purge_personal_data(conn: asyncpg.Connection, photo_dir: Path) -> Purged:
    purged = await purge(conn)
    for name in purged.photo_files:
        remove_photo(photo_dir, name)
    log.info("personal data purged", extra={"fields": {
        "photos": len(purged.photo_files), "sessions": purged.sessions,
        "reset_links": purged.reset_links, "mail_addresses": purged.mail_addresses}})
    return purged
