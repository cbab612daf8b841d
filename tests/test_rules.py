"""The region's rules are data the database holds, each in one place: the purchase limit and the
replacement fee (table rules), the opposition reasons with their decline codes (card_statuses);
and every response code the SQL can answer is one the protocol knows."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import asyncpg
import pytest

from conftest import ACTIVE_TERMINAL, TEST_SCHOOL_YEAR, balance_of
from ledger.cards import OPPOSITION_REASONS, find_card, replace_card
from ledger.demo_region import card_uid
from ledger.migrate import SQL_DIR
from ledger.rules import RulesRefused, current_rules, set_rules
from terminal_protocol.response_codes import RESPONSE_CODES

ORDINARY = 5
CLI_TIMEOUT_S = 60
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
    await set_rules(conn, actor=ACTOR, max_purchase_amount_cents=1000)
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


async def test_a_rule_change_is_audited_and_bounded(conn):
    changed = await set_rules(conn, actor=ACTOR, replacement_fee_cents=6_00)
    assert changed.replacement_fee_cents == 6_00
    row = await conn.fetchrow("SELECT actor, before, after FROM audit_log WHERE action = 'rules.set'")
    assert (row["actor"], json.loads(row["before"]), json.loads(row["after"])) == (
        ACTOR, {"replacement_fee_cents": 5_00}, {"replacement_fee_cents": 6_00})
    for bad in ({"max_purchase_amount_cents": 0}, {"replacement_fee_cents": -1},
                {"rights_renewal_opens_month": 7}, {"no_such_rule": 1},
                {"rights_renewal_opens_month": 2, "rights_renewal_opens_day": 29}):
        with pytest.raises(RulesRefused):
            await set_rules(conn, actor=ACTOR, **bad)
    assert await current_rules(conn) == changed
    with pytest.raises(asyncpg.CheckViolationError):    # the table itself refuses it too
        await conn.execute("UPDATE rules SET rights_renewal_opens_month = 2,"
                           " rights_renewal_opens_day = 29")


def test_hdfpay_rules_shows_and_sets(dsn):
    def hdfpay(*args):
        return subprocess.run([sys.executable, "-m", "hdfpay.cli", "rules", *args],
                              capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
                              env={**os.environ, "DATABASE_URL": dsn}, stdin=subprocess.DEVNULL)
    shown = hdfpay("show")
    assert shown.returncode == 0 and "300,00" in shown.stdout and "20/06" in shown.stdout
    changed = hdfpay("set", "--max-purchase", "250", "--renewal-opens", "06-15")
    assert changed.returncode == 0, changed.stderr
    assert "250,00" in changed.stdout and "15/06" in changed.stdout
    refused = hdfpay("set", "--renewal-opens", "02-30")
    assert refused.returncode == 2 and "no such date: 02-30" in refused.stderr
    assert hdfpay("set", "--max-purchase", "-3").returncode == 2
    retired = subprocess.run([sys.executable, "-m", "hdfpay.cli", "rules", "show"],
                             capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
                             env={**os.environ, "DATABASE_URL": dsn,
                                  "HDFPAY_MAX_PURCHASE_AMOUNT_CENTS": "40000"})
    assert retired.returncode == 2 and "hdfpay rules set --max-purchase" in retired.stderr
