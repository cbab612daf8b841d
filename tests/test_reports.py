"""Operator reports: volumes by partner and category, declines by reason, the funds position
reconciled against the ledger; and the `hdfpay settle | payouts | payee | report` commands."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pytest

from hdfpay.cli import build_parser
from ledger import reports
from ledger.clock import pin_clock
from ledger.demo_region import card_uid, terminal_id
from ledger.settlement import run_lines, settle
from terminal_protocol.response_codes import APPROVED_CODES

from conftest import paris, set_balance
from test_payout_files import REGION, french_iban
from test_settlement import ACTOR, LedgerTill, a_day_with_a_refund_and_a_reversal

NOV_24, NOV_25, NOV_26 = dt.date(2026, 11, 24), dt.date(2026, 11, 25), dt.date(2026, 11, 26)
EQUIPMENT_PARTNER = 7                        # Outillage Pro Nord
COMMAND_TIMEOUT_S = 60


async def busy_days(conn) -> None:
    """The shared day, an equipment sale, and declines: a lost card (41), no rights (57), too
    little money (51), a refund of an unknown ticket (25)."""
    await a_day_with_a_refund_and_a_reversal(conn)
    tools = LedgerTill(conn, terminal_id(EQUIPMENT_PARTNER, 1))
    await tools.purchase(11, 99_00, paris(2026, 11, 24, 14, 0))
    await tools.purchase(1, 5_00, paris(2026, 11, 24, 14, 1), expect="41")
    await tools.purchase(50, 5_00, paris(2026, 11, 24, 14, 2), expect="57")
    await tools.purchase(12, 280_00, paris(2026, 11, 24, 14, 3), expect="51")
    await tools.purchase(13, 290_00, paris(2026, 11, 25, 9, 0), expect="51")
    await tools.refund({"rrn": "000000000000", "card": card_uid(1)}, 1_00, paris(2026, 11, 25, 9, 1), expect="25")
    await pin_clock(conn, paris(2026, 11, 26, 10, 0))


async def test_volumes_by_day_category_and_partner(conn):
    await busy_days(conn)
    rows = await reports.volumes(conn, reports.Period(NOV_24, NOV_25))
    table = {(r["business_day"], r["category"], r["partner_id"]):
             (r["purchases_count"], r["purchases_cents"], r["reversals_cents"], r["refunds_cents"], r["net_cents"])
             for r in rows}
    assert table == {
        (NOV_24, "BOOKSHOP", 1): (3, 62_50, 20_00, 5_00, 37_50),
        (NOV_24, "BOOKSHOP", 2): (1, 7_00, 0, 0, 7_00),
        (NOV_24, "BOOKSHOP", None): (4, 69_50, 20_00, 5_00, 44_50),
        (NOV_24, "EQUIPMENT", EQUIPMENT_PARTNER): (1, 99_00, 0, 0, 99_00),
        (NOV_24, "EQUIPMENT", None): (1, 99_00, 0, 0, 99_00),
        (NOV_25, "BOOKSHOP", 1): (1, 4_00, 0, 0, 4_00),
        (NOV_25, "BOOKSHOP", None): (1, 4_00, 0, 0, 4_00),
        (None, None, None): (6, 172_50, 20_00, 5_00, 147_50)}
    only_25 = await reports.volumes(conn, reports.Period(NOV_25, NOV_25))
    assert [r["net_cents"] for r in only_25 if r["business_day"] is None] == [4_00]


async def test_volumes_agree_with_what_settlement_paid(conn):
    """Two sources: the authorizations' approved amounts and the merchant accounts' transfers."""
    await busy_days(conn)
    run = (await settle(conn, actor=ACTOR)).run
    settled = {(l.business_day, l.partner_id): l.net_cents for l in await run_lines(conn, run.run_id)}
    volumes = {(r["business_day"], r["partner_id"]): r["net_cents"]
               for r in await reports.volumes(conn, reports.Period(None, NOV_25))
               if r["partner_id"] is not None}
    assert settled == volumes and len(settled) == 4


async def test_declines_by_reason(conn):
    await busy_days(conn)
    total, rows = await reports.declines(conn, reports.Period(NOV_24, NOV_25), APPROVED_CODES)
    assert [(r["response_code"], r["message_type"], r["count"], r["requested_cents"]) for r in rows] == [
        ("51", "PURCHASE", 2, 570_00), ("25", "REFUND", 1, 1_00), ("41", "PURCHASE", 1, 5_00),
        ("57", "PURCHASE", 1, 5_00)]
    assert total == 8 + 5                      # the shared day's 7 messages and the sale, 5 declines
    total, rows = await reports.declines(conn, reports.Period(NOV_24, NOV_24), APPROVED_CODES)
    assert (total, sum(r["count"] for r in rows)) == (10, 3)


async def test_the_funds_position_reconciles_with_the_ledger(conn):
    await busy_days(conn)
    await set_balance(conn, card_uid(20), 0)                                # an expiry, then nothing
    await conn.execute("INSERT INTO pending_fees (beneficiary_id, amount_cents, reason)"
                       " SELECT beneficiary_id, 500, 'LOST' FROM cards WHERE uid = $1", card_uid(21))
    await conn.execute("SELECT reload_wallet(beneficiary_id, 2026, 1000, 'test-fee') FROM cards"
                       " WHERE uid = $1", card_uid(21))                     # recovers the fee
    await settle(conn, actor=ACTOR, through_day=NOV_24)
    report = await reports.funds(conn, reports.Period(NOV_24, NOV_26))
    f = report.flows
    assert (f["purchases_cents"], f["reversals_cents"], f["refunds_cents"], f["spent_cents"]) == (
        172_50, 20_00, 5_00, 147_50)
    assert f["settled_cents"] == 143_50                                     # the 24th: 44.50 + 99
    everything = await reports.funds(conn, reports.Period(None, NOV_26))
    funded = await conn.fetchval("SELECT sum(amount_cents) FROM transfers WHERE code = 'RELOAD'")
    assert everything.flows["funded_cents"] == funded and everything.flows["fees_cents"] == 5_00
    assert everything.flows["expired_cents"] > 0
    position = report.position
    assert position["merchant_payable_cents"] == 147_50 - 143_50            # the 25th, not settled
    assert position["paid_to_merchants_cents"] == 143_50
    assert position["wallets_cents"] == (funded - 147_50 - everything.flows["expired_cents"] - 5_00)
    assert report.reconciled and all(check.ok for check in report.checks) and report.violations == []
    assert report.checks[0].left == report.checks[0].right > 0             # Σ debits = Σ credits


async def test_a_void_after_1_may_is_expired_money_and_the_funds_still_reconcile(conn):
    """A void before 1 May gives the money back to the wallet; a void after the wallet closed
    (and its balance was swept) books it to the expired-funds account (authorize_reversal.sql): the
    report counts it as expired, not as money back in the wallets."""
    from ledger.expiry import expire_school_year
    shop = LedgerTill(conn, terminal_id(1, 1))
    late = await shop.purchase(5, 10_00, paris(2027, 4, 30, 23, 50))
    voided = await shop.purchase(5, 4_00, paris(2027, 4, 30, 23, 55))
    assert (await shop.reversal(voided, paris(2027, 4, 30, 23, 58)))["rc"] == "00"
    await pin_clock(conn, paris(2027, 5, 1, 0, 5))
    swept = (await expire_school_year(conn, 2026, actor=ACTOR)).expired_cents
    assert swept > 0
    before = await reports.funds(conn, reports.Period(None, dt.date(2027, 5, 1)))
    assert before.reconciled, [c for c in before.checks if not c.ok]
    assert (await shop.reversal(late, paris(2027, 5, 1, 0, 10)))["rc"] == "00"
    assert await conn.fetchval(
        "SELECT a.kind FROM transfers t JOIN accounts a ON a.id = t.credit_account_id"
        " WHERE t.code = 'REVERSAL' ORDER BY t.id DESC LIMIT 1") == "EXPIRED_FUNDS"

    after = await reports.funds(conn, reports.Period(None, dt.date(2027, 5, 1)))
    assert after.reconciled and after.violations == [], [c for c in after.checks if not c.ok]
    f = after.flows
    assert (f["reversals_cents"], f["reversals_to_wallets_cents"], f["reversals_to_expired_funds_cents"]) \
        == (14_00, 4_00, 10_00)
    assert (f["expiry_sweeps_cents"], f["expired_cents"]) == (swept, swept + 10_00)
    assert after.position["expired_funds_cents"] == swept + 10_00
    assert after.position["wallets_cents"] == before.position["wallets_cents"]   # nothing back
    may_day = (await reports.funds(conn, reports.Period(dt.date(2027, 5, 1), dt.date(2027, 5, 1)))).flows
    assert (may_day["reversals_to_wallets_cents"], may_day["reversals_to_expired_funds_cents"],
            may_day["spent_cents"], may_day["expired_cents"]) == (0, 10_00, -10_00, swept + 10_00)
    april = (await reports.funds(conn, reports.Period(dt.date(2027, 4, 30), dt.date(2027, 4, 30)))).flows
    assert (april["reversals_to_wallets_cents"], april["reversals_to_expired_funds_cents"],
            april["spent_cents"], april["expired_cents"]) == (4_00, 0, 10_00, 0)


async def test_a_transfer_booked_to_the_wrong_account_is_not_reconciled(conn):
    await busy_days(conn)
    await settle(conn, actor=ACTOR, through_day=NOV_24)
    await conn.execute(                     # balanced, yet a settlement paid into fee income
        "INSERT INTO transfers (code, debit_account_id, credit_account_id, amount_cents, reference)"
        " SELECT 'SETTLEMENT', p.merchant_account_id, a.id, 100, 'misposted' FROM partners p, accounts a"
        " WHERE p.id = 1 AND a.kind = 'FEE_INCOME'")
    report = await reports.funds(conn, reports.Period(None, NOV_25))
    assert not report.reconciled
    failed = {check.rule for check in report.checks if not check.ok}
    assert failed == {"paid to merchants = settled", "fee income = fees"}


async def test_a_sale_that_reached_a_settled_day_late_is_not_reconciled(conn):
    await busy_days(conn)
    await settle(conn, actor=ACTOR, through_day=NOV_24)
    assert (await reports.funds(conn, reports.Period(None, NOV_25))).reconciled
    # As if a purchase stamped 24 Nov 23:59:59 had committed after the run read that day.
    await LedgerTill(conn, terminal_id(2, 1)).purchase(14, 3_00, paris(2026, 11, 24, 23, 59, 59))
    await pin_clock(conn, paris(2026, 11, 26, 10, 0))
    report = await reports.funds(conn, reports.Period(None, NOV_25))
    [failed] = [check for check in report.checks if not check.ok]
    assert (failed.rule, failed.left, failed.right) == (
        "settled days = journal through the last settled day", 143_50, 146_50)


def test_a_period_is_bounded():
    with pytest.raises(reports.ReportRefused, match="after it ends"):
        reports.Period(NOV_25, NOV_24).check()
    with pytest.raises(reports.ReportRefused, match="at most"):
        reports.Period(dt.date(2025, 1, 1), NOV_25).check()


def hdfpay(dsn: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hdfpay.cli", *args], capture_output=True,
                          text=True, timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL,
                          env={**os.environ, "DATABASE_URL": dsn, **(env or {})})


def test_the_settlement_commands_have_help():
    commands = build_parser()._subparsers._group_actions[0].choices
    for name in ("settle", "payouts", "payee", "report"):
        assert name in commands
        assert "usage: hdfpay" in commands[name].format_help()


async def test_an_operator_settles_pays_and_reads_the_reports_from_the_cli(dsn, conn, tmp_path):
    await busy_days(conn)
    refused = hdfpay(dsn, "settle", "--day", "2026-11-26")
    assert refused.returncode == 2 and "not closed yet" in refused.stderr and "Traceback" not in refused.stderr
    settled = hdfpay(dsn, "settle")
    assert settled.returncode == 0, settled.stderr
    assert "run 1: settled the first transaction through 2026-11-25" in settled.stdout
    assert "147.50 EUR paid" in settled.stdout                  # 37.50 + 7 + 99 on the 24th, 4 on the 25th
    assert "nothing moved" in hdfpay(dsn, "settle", "--day", "2026-11-25").stdout

    bad = hdfpay(dsn, "payee", "1", "--name", "SARL Furet", "--iban", "FR7630004000010000000000299",
                 "--bic", "BNPAFRPP")
    assert bad.returncode == 2 and "invalid IBAN" in bad.stderr
    for partner in (1, 2, EQUIPMENT_PARTNER):
        ok = hdfpay(dsn, "payee", str(partner), "--name", f"SARL {partner}", "--iban",
                    french_iban(partner), "--bic", "BNPAFRPP")
        assert ok.returncode == 0, ok.stderr
    no_debtor = hdfpay(dsn, "payouts", "--run", "1", "--output", str(tmp_path),
                       env={"HDFPAY_DEBTOR_IBAN": ""})
    assert no_debtor.returncode == 2 and "HDFPAY_DEBTOR_IBAN" in no_debtor.stderr
    made = hdfpay(dsn, "payouts", "--run", "1", "--output", str(tmp_path / "out"),
                  "--debtor-name", REGION.name, "--debtor-iban", REGION.iban, "--debtor-bic", REGION.bic)
    assert made.returncode == 0, made.stderr
    assert "4 payments, 147.50 EUR, message id HDFPAY-SETTLE-0000000001" in made.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "hdfpay-payout-run000001.csv", "hdfpay-payout-run000001.pain001.xml"]
    assert "no settlement run 9" in hdfpay(dsn, "payouts", "--run", "9", "--output", str(tmp_path)).stderr

    volumes = hdfpay(dsn, "report", "volumes", "--from", "2026-11-24", "--to", "2026-11-25")
    assert volumes.returncode == 0 and "all equipment partners" in volumes.stdout
    assert "147.50" in volumes.stdout.splitlines()[-1]                     # the total line
    declines = hdfpay(dsn, "report", "declines", "--from", "2026-11-24", "--to", "2026-11-25")
    assert "insufficient funds" in declines.stdout and "5 declined" in declines.stdout
    funds = hdfpay(dsn, "report", "funds")
    assert funds.returncode == 0 and "reconciled: Σ debits = Σ credits" in funds.stdout
    runs = hdfpay(dsn, "report", "settlement")
    assert "cli:" in runs.stdout and "147.50" in runs.stdout
    bad_date = hdfpay(dsn, "report", "volumes", "--from", "24/11/2026")
    assert bad_date.returncode == 2 and "not a date" in bad_date.stderr
