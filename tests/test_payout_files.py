"""Payout files: a pain.001 that validates against the XSD shipped with sepaxml and whose sums
match the run, a CSV of every line, made once, bank details checked with schwifty."""

from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal
from pathlib import Path
from xml.etree import ElementTree

import pytest
import sepaxml
import xmlschema
from schwifty import IBAN

from backoffice.payout_files import (PAIN001_SCHEMA, BankAccount, PayoutError, end_to_end_id, message_id,
                                     payout_files, set_payee, write_payout_files)
from ledger.clock import pin_clock
from ledger.demo_region import PARTNERS, terminal_id
from ledger.partners import update_partner
from ledger.settlement import settle

from conftest import paris
from test_settlement import ACTOR, LedgerTill, a_day_with_a_refund_and_a_reversal

XSD = Path(sepaxml.__file__).parent / "schemas" / f"{PAIN001_SCHEMA}.xsd"
NS = {"p": f"urn:iso:std:iso:20022:tech:xsd:{PAIN001_SCHEMA}"}
REGION = BankAccount.checked("Region Hauts-de-France", str(IBAN.generate(
    "FR", bank_code="30001", branch_code="00064", account_code="00000059000")), "BDFEFRPPCCT",
    "the region's account")


def french_iban(partner_id: int) -> str:
    """A valid French IBAN (check digits and RIB key computed by schwifty)."""
    return str(IBAN.generate("FR", bank_code="30004", branch_code="00001",
                             account_code=f"{partner_id:011d}"))


@pytest.fixture
async def payees(conn):
    for partner_id in range(1, len(PARTNERS) + 1):
        await set_payee(conn, partner_id, name=f"SARL Partenaire Numéro {partner_id}",
                        iban=french_iban(partner_id), bic="BNPAFRPPXXX", actor=ACTOR)


async def settled_run(conn) -> int:
    await a_day_with_a_refund_and_a_reversal(conn)
    return (await settle(conn, actor=ACTOR, through_day=dt.date(2026, 11, 24))).run.run_id


async def test_the_pain001_validates_and_its_sums_match_the_run(conn, payees):
    run_id = await settled_run(conn)
    files = await payout_files(conn, run_id, actor=ACTOR, debtor=REGION)
    schema = xmlschema.XMLSchema(str(XSD))
    schema.validate(files.pain001.decode())                     # raises if invalid
    document = ElementTree.fromstring(files.pain001)
    header = document.find("p:CstmrCdtTrfInitn/p:GrpHdr", NS)
    assert header.findtext("p:MsgId", namespaces=NS) == message_id(run_id)
    assert header.findtext("p:NbOfTxs", namespaces=NS) == "2"
    assert Decimal(header.findtext("p:CtrlSum", namespaces=NS)) == Decimal("44.50")
    [batch] = document.findall("p:CstmrCdtTrfInitn/p:PmtInf", NS)
    assert batch.findtext("p:DbtrAcct/p:Id/p:IBAN", namespaces=NS) == REGION.iban
    assert batch.findtext("p:ReqdExctnDt/p:Dt", namespaces=NS) == "2026-11-27"  # next weekday
    payments = {tx.findtext("p:CdtrAcct/p:Id/p:IBAN", namespaces=NS):
                (Decimal(tx.findtext("p:Amt/p:InstdAmt", namespaces=NS)),
                 tx.findtext("p:PmtId/p:EndToEndId", namespaces=NS))
                for tx in batch.findall("p:CdtTrfTxInf", NS)}
    assert payments == {french_iban(1).replace(" ", ""): (Decimal("37.50"), "HDF-P000001-20261124"),
                        french_iban(2).replace(" ", ""): (Decimal("7.00"), "HDF-P000002-20261124")}
    assert (files.payments, files.ctrl_sum_cents) == (2, await conn.fetchval(
        "SELECT sum(amount_cents) FROM transfers WHERE code = 'SETTLEMENT'"))


async def test_the_schema_check_can_fail(conn, payees):
    files = await payout_files(conn, await settled_run(conn), actor=ACTOR, debtor=REGION)
    broken = files.pain001.decode().replace("<CtrlSum>44.50</CtrlSum>", "<CtrlSum>44,50</CtrlSum>", 1)
    assert broken != files.pain001.decode()
    assert not xmlschema.XMLSchema(str(XSD)).is_valid(broken)


async def test_the_csv_lists_every_line_and_pays_what_the_ledger_moved(conn, payees):
    shop = LedgerTill(conn, terminal_id(3, 1))
    await shop.refund(await shop.purchase(5, 9_00, paris(2026, 11, 20, 10, 0)), 9_00,
                      paris(2026, 11, 24, 10, 0))                  # partner 3: a debt on the 24th
    run_id = await settled_run(conn)
    files = await payout_files(conn, run_id, actor=ACTOR, debtor=REGION)
    rows = list(csv.DictReader(io.StringIO(files.csv.decode())))
    assert [(r["partner_id"], r["business_day"], r["paid_cents"], r["debt_after_cents"]) for r in rows] == [
        ("1", "2026-11-24", "3750", "0"), ("2", "2026-11-24", "700", "0"),
        ("3", "2026-11-20", "900", "0"), ("3", "2026-11-24", "0", "900")]
    assert rows[0]["iban"] == french_iban(1).replace(" ", "") and rows[3]["end_to_end_id"] == ""
    assert sum(int(r["paid_cents"]) for r in rows) == files.ctrl_sum_cents == 53_50


async def test_files_are_made_once_and_kept(conn, payees, tmp_path):
    run_id = await settled_run(conn)
    first = await payout_files(conn, run_id, actor=ACTOR, debtor=REGION)
    await pin_clock(conn, paris(2026, 11, 27, 9, 0))
    again = await payout_files(conn, run_id, actor="cli:other", debtor=REGION)
    assert first.created and not again.created
    assert (again.csv, again.pain001, again.message_id) == (first.csv, first.pain001, first.message_id)
    assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'settlement.payout_file'") == 1
    written = write_payout_files(again, tmp_path)
    assert [p.name for p in written] == [f"hdfpay-payout-run{run_id:06d}.csv",
                                         f"hdfpay-payout-run{run_id:06d}.pain001.xml"]
    assert written[1].read_bytes() == first.pain001
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)  # no temporaries


async def test_an_invalid_partner_iban_is_refused_with_a_clear_message(conn, payees):
    run_id = await settled_run(conn)
    await conn.execute("UPDATE partners SET iban = 'FR7630004000010000000000299' WHERE id = 2")
    await conn.execute("UPDATE partners SET iban = NULL WHERE id = 1")
    with pytest.raises(PayoutError) as refused:
        await payout_files(conn, run_id, actor=ACTOR, debtor=REGION)
    message = str(refused.value)
    assert "partner 1 (Librairie Le Furet du Nord): no IBAN on record" in message
    assert "partner 2 (Librairie Meura): invalid IBAN 'FR7630004000010000000000299'" in message
    assert await conn.fetchval("SELECT count(*) FROM payout_files") == 0
    assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'settlement.payout_file'") == 0


async def test_set_payee_checks_the_iban_rib_key_and_bic(conn):
    valid = french_iban(4).replace(" ", "")
    bban = valid[4:-2] + f"{(int(valid[-2:]) + 1) % 97:02d}"      # the national RIB key is wrong
    digits = int("".join(str(int(c, 36)) for c in bban + "FR00"))
    rib_key_wrong = f"FR{98 - digits % 97:02d}{bban}"              # yet IBAN check digits are right
    for iban, bic, fault in [("FR7630004000010000000000299", "BNPAFRPPXXX", "invalid IBAN"),
                             (rib_key_wrong, "BNPAFRPPXXX", "national checksum"),
                             (valid, "BNPA FR", "invalid BIC")]:
        with pytest.raises(PayoutError, match=fault):
            await set_payee(conn, 4, name="SARL Test", iban=iban, bic=bic, actor=ACTOR)
    assert await conn.fetchval("SELECT iban FROM partners WHERE id = 4") is None
    account = await set_payee(conn, 4, name="  SARL Test ", iban=french_iban(4), bic="bnpafrpp", actor=ACTOR)
    assert (account.name, account.iban, account.bic) == ("SARL Test", valid, "BNPAFRPP")
    assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'partner.payee'") == 1


def test_the_region_account_comes_from_options_or_the_environment():
    environ = {"HDFPAY_DEBTOR_NAME": REGION.name, "HDFPAY_DEBTOR_IBAN": REGION.iban,
               "HDFPAY_DEBTOR_BIC": REGION.bic}
    assert BankAccount.debtor_from(environ) == REGION
    assert BankAccount.debtor_from(environ, name="Région HDF").name == "Région HDF"
    with pytest.raises(PayoutError, match="set HDFPAY_DEBTOR_IBAN"):
        BankAccount.debtor_from({"HDFPAY_DEBTOR_NAME": "x", "HDFPAY_DEBTOR_BIC": "BDFEFRPP"})
    with pytest.raises(PayoutError, match="the region's account: invalid IBAN"):
        BankAccount.debtor_from({**environ, "HDFPAY_DEBTOR_IBAN": "FR0000000000000000000000000"})


async def test_a_run_that_pays_nobody_has_a_csv_and_no_pain001(conn, payees):
    shop = LedgerTill(conn, terminal_id(3, 1))
    sale = await shop.purchase(5, 9_00, paris(2026, 11, 20, 10, 0))
    await pin_clock(conn, paris(2026, 11, 21, 10, 0))
    await settle(conn, actor=ACTOR)
    await shop.refund(sale, 9_00, paris(2026, 11, 22, 10, 0))
    await pin_clock(conn, paris(2026, 11, 23, 10, 0))
    run_id = (await settle(conn, actor=ACTOR)).run.run_id
    files = await payout_files(conn, run_id, actor=ACTOR, debtor=REGION)
    assert (files.payments, files.ctrl_sum_cents, files.pain001) == (0, 0, None)
    assert len(files.csv.decode().splitlines()) == 2


async def test_files_of_a_run_never_made_need_the_region_account(conn):
    run_id = await settled_run(conn)
    with pytest.raises(PayoutError, match="never made"):
        await payout_files(conn, run_id, actor=ACTOR)


def test_identifiers_longer_than_iso_20022_allows_are_refused():
    assert message_id(1) == "HDFPAY-SETTLE-0000000001"
    with pytest.raises(PayoutError, match="longer than 35"):
        message_id(10**22)
    with pytest.raises(PayoutError, match="longer than 35"):
        end_to_end_id(10**30, dt.date(2026, 9, 1))


# OWASP's CSV injection list: a cell starting with one of these is a formula to a spreadsheet.
FORMULA_NAMES = ["=cmd|' /C calc'!A0", "@SUM(1+9)*cmd|' /C calc'!A0", "+33 Boulangerie",
                 "-20% Outlet", "\t=1+1", "\r=1+1"]


@pytest.mark.parametrize("formula", FORMULA_NAMES)
async def test_names_that_a_spreadsheet_would_run_are_neutralised_in_the_csv(conn, payees, formula):
    """Partner and payee names come from operators (and partners, through them): the CSV opened
    in a spreadsheet must show them as text, never evaluate them."""
    await update_partner(conn, 1, actor=ACTOR, name=formula)
    await set_payee(conn, 1, name=formula, iban=french_iban(1), bic="BNPAFRPPXXX", actor=ACTOR)
    files = await payout_files(conn, await settled_run(conn), actor=ACTOR, debtor=REGION)
    row = next(r for r in csv.DictReader(io.StringIO(files.csv.decode(), newline=""))
               if r["partner_id"] == "1")
    for column in ("partner_name", "payee_name"):
        assert row[column][0] == "'", (column, row[column])
        assert row[column][1:].strip() == formula.strip()
    # numbers stay numbers: a negative amount is not a name
    assert all(not cell.startswith("'") for key, cell in row.items()
               if key not in ("partner_name", "payee_name"))
