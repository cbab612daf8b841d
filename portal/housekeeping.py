"""The students' space's periodic purge of personal data (ledger/personal_data.py says what and
when): the ledger forgets, this deletes the photo files it names."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import asyncpg

from ledger.personal_data import Purged, purge
from portal.photos import remove_photo

PURGE_INTERVAL_S = 3600            # personal data outlives its rule by an hour at most
PURGE_DB_TIMEOUT_S = 60

log = logging.getLogger("hdfpay.portal")


async def purge_once(pool: asyncpg.Pool, photo_dir: Path) -> Purged:
    async with pool.acquire(timeout=PURGE_DB_TIMEOUT_S) as conn:
        purged = await asyncio.wait_for(purge(conn), PURGE_DB_TIMEOUT_S)
    for name in purged.photo_files:
        remove_photo(photo_dir, name)
    log.info("personal data purged", extra={"fields": {
        "photos": len(purged.photo_files), "sessions": purged.sessions,
        "reset_links": purged.reset_links, "mail_addresses": purged.mail_addresses}})
    return purged


async def purge_forever(pool: asyncpg.Pool, photo_dir: Path) -> None:
    while True:
        try:
            await purge_once(pool, photo_dir)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            log.warning("personal data purge failed (%s): next time", type(exc).__name__)
        await asyncio.sleep(PURGE_INTERVAL_S)
