"""Payout files of a settlement run: a CSV for the region's staff and an ISO 20022 SEPA credit
transfer initiation (pain.001, written by sepaxml and validated against its shipped XSD) for the
region's bank. Bank details are checked with schwifty (IBAN check digits, the French RIB key,
BIC structure) before anything is written.

Names in the CSV are written so that a spreadsheet shows them as text (spreadsheet_cell):
OWASP's CSV injection advice, a leading ' before = + - @ tab or carriage return. They are not
refused on input: "+ de Saveurs" or "-20 % Outlet" are honest shop names, the API and the
pain.001 are no spreadsheet, and names already stored would still reach the CSV; the danger
is only where a spreadsheet reads the cell, so it is defused there.

A run's files are made once and kept in the database (payout_files): a second request gets the
same bytes and the same message id, so the bank's duplicate check catches a file sent twice.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Mapping

import asyncpg
from schwifty import BIC, IBAN
from schwifty.exceptions import SchwiftyException
from sepaxml import SepaTransfer

from ledger import payouts
from ledger.clock import business_local_now
from ledger.audit import append_audit
from ledger.settlement import get_run

PAIN001_SCHEMA = "pain.001.001.09"    # EPC SEPA Credit Transfer rulebook since November 2023
MAX_NAME_CHARS = 70                   # ISO 20022 Max70Text (party names)
MAX_ID_CHARS = 35                     # ISO 20022 Max35Text (message and end-to-end ids)
DEBTOR_ENV = {"name": "HDFPAY_DEBTOR_NAME", "iban": "HDFPAY_DEBTOR_IBAN", "bic": "HDFPAY_DEBTOR_BIC"}
AUDIT_ACTION_FILE = "settlement.payout_file"
AUDIT_ACTION_PAYEE = "partner.payee"
AUDIT_ACTION_DOWNLOAD = "settlement.payout_file_download"
FILE_KINDS = ("csv", "pain001")
CSV_COLUMNS = ["run_id", "partner_id", "partner_name", "payee_name", "iban", "bic", "business_day",
               "purchases_count", "purchases_cents", "reversals_count", "reversals_cents",
               "refunds_count", "refunds_cents", "net_cents", "debt_before_cents", "paid_cents",
               "debt_after_cents", "end_to_end_id"]
# What makes a spreadsheet read a cell as a formula (OWASP, CSV injection).
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


class PayoutError(ValueError):
    """The files cannot be made as asked; the message says what to fix."""


@dataclasses.dataclass(frozen=True)
class BankAccount:
    name: str
    iban: str
    bic: str

    @classmethod
    def checked(cls, name: str | None, iban: str | None, bic: str | None, whose: str) -> "BankAccount":
        """Normalised (compact, upper case) or PayoutError naming `whose` account and the fault."""
        missing = [label for label, value in (("account holder", name), ("IBAN", iban), ("BIC", bic))
                   if not value or not str(value).strip()]
        if missing:
            raise PayoutError(f"{whose}: no {', '.join(missing)} on record")
        if not isinstance(name, str) or len(name.strip()) > MAX_NAME_CHARS:
            raise PayoutError(f"{whose}: the account holder's name must be 1 to {MAX_NAME_CHARS} characters")
        if not isinstance(iban, str) or not isinstance(bic, str):
            raise PayoutError(f"{whose}: IBAN and BIC are text")
        try:
            checked_iban = IBAN(iban, validate_bban=True)
        except SchwiftyException as exc:
            raise PayoutError(f"{whose}: invalid IBAN {iban!r} ({exc})") from None
        try:
            checked_bic = BIC(bic)
        except SchwiftyException as exc:
            raise PayoutError(f"{whose}: invalid BIC {bic!r} ({exc})") from None
        return cls(name.strip(), checked_iban.compact, checked_bic.compact)

    @classmethod
    def debtor_from(cls, environ: Mapping[str, str] = os.environ, **given: str | None) -> "BankAccount":
        """The region's account: options given win over the environment (DEBTOR_ENV)."""
        values = {k: given.get(k) or environ.get(variable) for k, variable in DEBTOR_ENV.items()}
        missing = [f"{DEBTOR_ENV[k]} (or --debtor-{k})" for k, v in values.items() if not v]
        if missing:
            raise PayoutError(f"the region's bank account is not configured: set {', '.join(missing)}")
        return cls.checked(values["name"], values["iban"], values["bic"], "the region's account")


@dataclasses.dataclass(frozen=True)
class PayoutFiles:
    run_id: int
    message_id: str
    payments: int
    ctrl_sum_cents: int
    csv: bytes
    pain001: bytes | None          # None when the run pays nobody
    created: bool                  # False: made earlier, returned as kept

    def names(self) -> dict[str, str]:
        stem = f"hdfpay-payout-run{self.run_id:06d}"
        return {"csv": f"{stem}.csv", "pain001": f"{stem}.pain001.xml"}


def message_id(run_id: int) -> str:
    return _max35(f"HDFPAY-SETTLE-{run_id:010d}")


def end_to_end_id(partner_id: int, day: dt.date) -> str:
    return _max35(f"HDF-P{partner_id:06d}-{day:%Y%m%d}")


def _max35(identifier: str) -> str:
    """ISO 20022 Max35Text: a longer id would make the bank refuse the whole file."""
    if len(identifier) > MAX_ID_CHARS:
        raise PayoutError(f"identifier {identifier!r} is longer than {MAX_ID_CHARS} characters")
    return identifier


def next_weekday(day: dt.date) -> dt.date:
    """The requested execution date: the first Monday-to-Friday after `day`."""
    day += dt.timedelta(days=1)
    while day.weekday() >= 5:
        day += dt.timedelta(days=1)
    return day


async def set_payee(conn: asyncpg.Connection, partner_id: int, *, name: str, iban: str, bic: str,
                    actor: str) -> BankAccount:
    """Record where a partner is paid, checked first, audited in the same transaction."""
    account = BankAccount.checked(name, iban, bic, f"partner {partner_id}")
    async with conn.transaction():
        before = await payouts.lock_payee(conn, partner_id)
        if before is None:
            raise PayoutError(f"no partner {partner_id}")
        await payouts.set_payee(conn, partner_id, account.name, account.iban, account.bic)
        await append_audit(conn, actor=actor, action=AUDIT_ACTION_PAYEE, subject=f"partner:{partner_id}",
                           before=dict(before), after=dataclasses.asdict(account))
    return account


async def kept_payout_files(conn: asyncpg.Connection, run_id: int) -> PayoutFiles | None:
    """The run's files as made, or None if they never were."""
    kept = await payouts.kept_files(conn, run_id)
    if kept is None:
        return None
    return PayoutFiles(run_id, kept["message_id"], kept["payments"], kept["ctrl_sum_cents"],
                       kept["csv"], kept["pain001"], created=False)


async def downloaded_payout_file(conn: asyncpg.Connection, run_id: int, kind: str, *,
                                 actor: str) -> tuple[str, bytes] | None:
    """(file name, bytes) of one of a run's kept files, and who took it (IBANs and amounts leave
    the system) in the audit trail, in one transaction: the operator API's download and the
    back office's. None: no files made for the run, or a pain.001 of a run that pays nobody."""
    if kind not in FILE_KINDS:
        raise ValueError(f"no payout file kind {kind!r}")
    async with conn.transaction():
        files = await kept_payout_files(conn, run_id)
        content = None if files is None else files.csv if kind == "csv" else files.pain001
        if content is None:
            return None
        name = files.names()[kind]
        await append_audit(conn, actor=actor, action=AUDIT_ACTION_DOWNLOAD,
                           subject=f"settlement_run:{run_id}",
                           after={"file": name, "kind": kind,
                                  "sha256": hashlib.sha256(content).hexdigest()})
    return name, content


async def payout_files(conn: asyncpg.Connection, run_id: int, *, actor: str,
                       debtor: BankAccount | None = None,
                       execution_date: dt.date | None = None) -> PayoutFiles:
    """The run's files: as kept if made before, else made now (needs `debtor`), kept and audited.
    Refused as a whole, naming every partner at fault, if any payee's bank details are wrong."""
    async with conn.transaction():
        await get_run(conn, run_id)  # UnknownRun if there is none
        await payouts.lock_run(conn, run_id)
        kept = await kept_payout_files(conn, run_id)
        if kept is not None:
            return kept
        if debtor is None:
            raise PayoutError(f"the payout files of run {run_id} were never made: make them first")
        lines = await payouts.lines_with_payees(conn, run_id)
        today = await business_local_now(conn)
        payees = _checked_payees([line for line in lines if line["paid_cents"] > 0])
        files = PayoutFiles(
            run_id, message_id(run_id), sum(1 for l in lines if l["paid_cents"] > 0),
            sum(l["paid_cents"] for l in lines), _csv(run_id, lines, payees),
            _pain001(run_id, lines, payees, debtor, execution_date or next_weekday(today.date()),
                     today) if payees else None, created=True)
        await payouts.keep_files(
            conn, run_id, message_id=files.message_id, payments=files.payments,
            ctrl_sum_cents=files.ctrl_sum_cents, debtor_iban=debtor.iban, csv=files.csv,
            pain001=files.pain001, actor=actor)
        await append_audit(conn, actor=actor, action=AUDIT_ACTION_FILE, subject=f"settlement_run:{run_id}",
                           after={"message_id": files.message_id, "payments": files.payments,
                                  "ctrl_sum_cents": files.ctrl_sum_cents, "debtor_iban": debtor.iban,
                                  "csv_sha256": hashlib.sha256(files.csv).hexdigest(),
                                  "pain001_sha256": files.pain001 and hashlib.sha256(files.pain001).hexdigest()})
    return files


def _checked_payees(paid_lines: list[asyncpg.Record]) -> dict[int, BankAccount]:
    payees, problems = {}, []
    for line in paid_lines:
        if line["partner_id"] in payees:
            continue
        try:
            payees[line["partner_id"]] = BankAccount.checked(
                line["payee_name"], line["iban"], line["bic"],
                f"partner {line['partner_id']} ({line['partner_name']})")
        except PayoutError as exc:
            problems.append(str(exc))
    if problems:
        raise PayoutError("no payout file made: fix these partners' bank details first"
                          " ('hdfpay payee'):\n  " + "\n  ".join(problems))
    return payees


def spreadsheet_cell(value):
    """A text cell that a spreadsheet shows as typed: a leading ' before a formula trigger.
    Numbers (a negative amount included) are left as numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


def _csv(run_id: int, lines: list[asyncpg.Record], payees: dict[int, BankAccount]) -> bytes:
    """Every line of the run, paid or not (a debt carried shows as paid_cents 0)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for line in lines:
        payee = payees.get(line["partner_id"])
        paid = line["paid_cents"] > 0
        writer.writerow([spreadsheet_cell(cell) for cell in (
            run_id, line["partner_id"], line["partner_name"],
            payee.name if payee else "", payee.iban if payee else "",
            payee.bic if payee else "", line["business_day"].isoformat(),
            *(line[c] for c in CSV_COLUMNS[7:17]),
            end_to_end_id(line["partner_id"], line["business_day"]) if paid else "")])
    return out.getvalue().encode()


class _RunTransfer(SepaTransfer):
    """sepaxml's transfer with the run's own message id and creation time in the group header."""

    def __init__(self, config: dict, msg_id: str, created_at: dt.datetime) -> None:
        self._header = (msg_id, created_at)
        super().__init__(config, schema=PAIN001_SCHEMA)

    def _create_header(self) -> None:
        super()._create_header()
        msg_id, created_at = self._header
        header = self._xml.find("CstmrCdtTrfInitn/GrpHdr")
        header.find("MsgId").text = msg_id
        header.find("CreDtTm").text = created_at.strftime("%Y-%m-%dT%H:%M:%S")


def _pain001(run_id: int, lines: list[asyncpg.Record], payees: dict[int, BankAccount],
             debtor: BankAccount, execution_date: dt.date, created_at: dt.datetime) -> bytes:
    transfer = _RunTransfer({"name": debtor.name, "IBAN": debtor.iban, "BIC": debtor.bic,
                             "batch": True, "currency": "EUR"}, message_id(run_id), created_at)
    for line in lines:
        if line["paid_cents"] <= 0:
            continue
        payee = payees[line["partner_id"]]
        transfer.add_payment({
            "name": payee.name, "IBAN": payee.iban, "BIC": payee.bic,
            "amount": int(line["paid_cents"]), "execution_date": execution_date,
            "endtoend_id": end_to_end_id(line["partner_id"], line["business_day"]),
            "description": f"Carte Generation HDF - ventes du {line['business_day']:%d/%m/%Y}"
                           f" - reglement {run_id}"})
    return transfer.export(validate=True)


def write_atomically(directory: Path, name: str, content: bytes) -> Path:
    """Whole or absent: written to a temporary file beside it, flushed, then renamed."""
    directory.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, directory / name)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    dir_handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_handle)
    finally:
        os.close(dir_handle)
    return directory / name


def write_payout_files(files: PayoutFiles, directory: Path) -> list[Path]:
    names = files.names()
    written = [write_atomically(directory, names["csv"], files.csv)]
    if files.pain001 is not None:
        written.append(write_atomically(directory, names["pain001"], files.pain001))
    return written
