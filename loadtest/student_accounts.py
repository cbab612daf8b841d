"""The students of the `students` load scenario: accounts with a known password on the
throwaway database, and the variables their locust users read."""

from __future__ import annotations

import asyncpg

from ledger.demo_region import card_uid
from ledger.students import create_account

PORTAL_URL_VARIABLE = "HDFPAY_LOADTEST_PORTAL_URL"
STUDENTS_VARIABLE = "HDFPAY_LOADTEST_STUDENTS"
# Known to the users: the database is the run's own, thrown away after it.
LOADTEST_STUDENT_PASSWORD = "une phrase de passe de test de charge"
STUDENT_ACCOUNTS_MAX = 50           # argon2id at ~0.1 s each: a few seconds to prepare


async def student_accounts(conn: asyncpg.Connection, cards: int) -> list[str]:
    """Accounts for the first demo students with a card; their dossier numbers."""
    dossiers = [r[0] for r in await conn.fetch(
        "SELECT b.dossier_number FROM cards c JOIN beneficiaries b ON b.id = c.beneficiary_id"
        " WHERE c.uid = ANY($1::bytea[]) ORDER BY b.id",
        [card_uid(n) for n in range(1, min(cards, STUDENT_ACCOUNTS_MAX) + 1)])]
    for dossier in dossiers:
        await create_account(conn, dossier, password=LOADTEST_STUDENT_PASSWORD)
    return dossiers
