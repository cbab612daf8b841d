"""Personal data is kept only as long as the rule says (ledger/personal_data.py): a finished
request's photo file is deleted, expired sessions and old reset links go, a sent mail's address
is erased after its days. `hdfpay students purge`, which a timer runs every hour, run here."""

from __future__ import annotations

import datetime as dt
import io
import os
import subprocess
import sys

from PIL import Image

from ledger import card_applications as applications
from ledger import card_requests, students
from ledger.clock import pin_clock
from ledger.mail_outbox import MAIL_KEEP_SENT_DAYS, claim_due, mark_sent
from portal.housekeeping import purge_personal_data
from ledger.demo_region import card_uid
from portal.photos import store_photo

from conftest import SCHOOL_DAY

CLI_TIMEOUT_S = 60


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (600, 800), (90, 120, 150)).save(out, format="PNG")
    return out.getvalue()


async def test_the_purge_keeps_nothing_past_its_rule(dsn, conn, tmp_path):
    await pin_clock(conn, SCHOOL_DAY)
    photo_dir = tmp_path / "photos"
    application_id = await applications.create_application(
        conn, last_name="Durand", first_name="Inès", birth_date=dt.date(2009, 5, 2),
        email="ines.durand@eleves.example", consent=True, portal_url="https://monespace.example")
    school = await conn.fetchval("SELECT id FROM establishments WHERE kind = 'LP' LIMIT 1")
    await applications.save_address(conn, application_id, address_line="3 rue Pasteur",
                                     address_complement="", mailbox_name="", postcode="80000",
                                     town="Amiens", establishment_id=school)
    stored = store_photo(_png(), photo_dir)
    await applications.save_photo(conn, application_id, photo_file=stored.file_name,
                                  size_bytes=stored.size_bytes, width_px=stored.width_px,
                                  height_px=stored.height_px)
    request_id = await applications.submit_application(conn, application_id, actor="student:1")
    dossier = await conn.fetchval("SELECT b.dossier_number FROM card_applications a"
                                  " JOIN beneficiaries b ON b.id = a.beneficiary_id")
    beneficiary_card = await conn.fetchval("SELECT c.card_number FROM cards c WHERE c.uid = $1",
                                           card_uid(5))
    await students.create_account(conn, await conn.fetchval(
        "SELECT b.dossier_number FROM cards c JOIN beneficiaries b ON b.id = c.beneficiary_id"
        " WHERE c.card_number = $1", beneficiary_card), password="une phrase de passe longue")
    await students.login(conn, beneficiary_card, "une phrase de passe longue")
    [mail] = await claim_due(conn, "test-sender", 10, 60_000)          # the account's e-mail
    await mark_sent(conn, mail.id)

    kept = await purge_personal_data(conn, photo_dir)                   # nothing is due yet
    assert (kept.photo_files, kept.sessions, kept.mail_addresses) == ((), 0, 0)
    assert (photo_dir / stored.file_name).exists()

    await card_requests.advance(conn, request_id, "rejected", actor="region",
                                reason="Photo non conforme")
    await pin_clock(conn, SCHOOL_DAY + dt.timedelta(days=MAIL_KEEP_SENT_DAYS, hours=1))
    purged = await purge_personal_data(conn, photo_dir)
    assert purged.photo_files == (stored.file_name,) and not (photo_dir / stored.file_name).exists()
    assert await conn.fetchval("SELECT photo_file FROM card_applications") is None
    assert purged.sessions == 1 and await conn.fetchval("SELECT count(*) FROM student_sessions") == 0
    assert purged.mail_addresses == 1
    assert await conn.fetchval("SELECT recipient FROM mail_outbox WHERE id = $1", mail.id) is None
    assert dossier.startswith("W")



def test_the_purge_command_runs_and_says_what_it_purged(dsn, tmp_path):
    done = subprocess.run([sys.executable, "-m", "hdfpay.cli", "students", "purge"],
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
                          stdin=subprocess.DEVNULL,
                          env={**os.environ, "DATABASE_URL": dsn,
                               "HDFPAY_PHOTO_DIR": str(tmp_path / "photos")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("purged: 0 photo(s), ")
