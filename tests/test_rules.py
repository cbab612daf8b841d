"""The region's rules are data the database holds, each in one place: the purchase limit and the
replacement fee (table rules), the opposition reasons with their decline codes (card_statuses);
and every response code the SQL can answer is one the protocol knows."""

from __future__ import annotations

import json
import os
import re

from conftest import ACTIVE_TERMINAL, TEST_SCHOOL_YEAR, balance_of
from ledger.cards import OPPOSITION_REASONS, find_card, replace_card
from ledger.demo_region import card_uid
from ledger.migrate import SQL_DIR
from ledger.rules import current_rules
from terminal_protocol.response_codes import RESPONSE_CODES

ORDINARY = 5
ACTOR = "region_operator:alice"
TERMINAL_FUNCTIONS = ("authorize_purchase", "authorize_reversal", "authorize_refund",
                      "open_terminal_message", "close_terminal_batch")


async def _purchase(conn, cents: int) -> dict:
    answer = await conn.fetchval(
        "SELECT authorize_purchase($1, $2, $3, 1, $4, $5, NULL, false, NULL, NULL)",
        ACTIVE_TERMINAL, os.urandom(8).hex(), os.urandom(32), card_uid(ORDINARY), cents)
    return json.loads(answer)


async def test_the_purchase_limit_is_the_database_s(conn):
    assert (await current_rules(conn)).max_purchase_amount_cents == 300_00
    await conn.execute("UPDATE rules SET max_purchase_amount_cents = 1000")
    assert (await _purchase(conn, 10_01))["rc"] == "61"
    assert (await _purchase(conn, 10_00))["rc"] == "00"


async def test_the_replacement_fee_is_the_database_s(conn):
    await conn.execute("UPDATE rules SET replacement_fee_cents = 700")
    before = await balance_of(conn, card_uid(ORDINARY), TEST_SCHOOL_YEAR)
    card = await find_card(conn, "HDF0000005")
    done = await replace_card(conn, card.id, bytes.fromhex("08aabbcc"), actor=ACTOR, reason="DAMAGED")
    assert (done.fee_cents, done.fee_taken_cents) == (7_00, 7_00)
    assert await balance_of(conn, card_uid(ORDINARY), TEST_SCHOOL_YEAR) == before - 7_00
    card = await find_card(conn, "HDF0000006")
    free = await replace_card(conn, card.id, bytes.fromhex("08aabbcd"), actor=ACTOR, reason="DEFECTIVE")
    assert free.fee_cents == 0


async def test_the_opposition_reasons_of_python_are_the_database_s(conn):
    rows = await conn.fetch("SELECT status FROM card_statuses WHERE is_opposition")
    assert sorted(r["status"] for r in rows) == sorted(OPPOSITION_REASONS)


async def test_every_response_code_the_sql_can_answer_is_known_to_the_protocol(conn):
    codes: set[str] = set()
    for name in TERMINAL_FUNCTIONS:
        text = (SQL_DIR / "functions" / f"{name}.sql").read_text()
        body = "\n".join(line.split("--")[0] for line in text.splitlines())
        codes |= set(re.findall(r"'(\d\d)'", body))
    codes |= {r["decline_code"] for r in await conn.fetch(
        "SELECT decline_code FROM card_statuses WHERE decline_code IS NOT NULL")}
    assert {"00", "10", "13", "41", "43", "51", "54", "57", "58", "61", "62", "63", "94", "95"} <= codes
    assert sorted(codes - set(RESPONSE_CODES)) == []
