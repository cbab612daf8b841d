"""First-card requests: the state machine's legal and illegal moves, the French labels the
beneficiary reads, the history and audit of each move, the establishment's scope, and the card
that 'active' issues working at the terminal."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys

import asyncpg
import pytest

from ledger import card_requests
from ledger.card_requests import STATES
from ledger.cards import Conflict, Invalid, NotFound, OutOfScope

from conftest import TEST_SCHOOL_YEAR

OPERATOR = "region_operator:alice"
STAFF = "establishment_staff:bob"
PATH = ["PREVALIDATED", "PHOTO_CHECKED", "PRINTED", "MAILED", "ACTIVE"]
LABELS = {"SUBMITTED": "Demande reçue", "PREVALIDATED": "Validée par l'établissement",
          "PHOTO_CHECKED": "Photo vérifiée", "PRINTED": "Carte imprimée",
          "MAILED": "Carte envoyée", "ACTIVE": "Carte active"}
PRINTED_UID = bytes.fromhex("04A1B2C3D4E5F6")
COMMAND_TIMEOUT_S = 120


async def new_student(conn, n: int = 1, establishment: int | None = None) -> tuple[str, int]:
    """A beneficiary with no card yet: (dossier number, establishment id)."""
    establishment = establishment or await conn.fetchval("SELECT min(id) FROM establishments")
    dossier = f"NEW{n:07d}"
    await conn.execute(
        "INSERT INTO beneficiaries (dossier_number, last_name, first_name, birth_date, email,"
        " establishment_id) VALUES ($1, 'Nouvel', 'Élève', '2010-03-01', $2, $3)",
        dossier, f"nouvel{n}@exemple.fr", establishment)
    return dossier, establishment


async def walk(conn, request_id: int, states: list[str], uid: bytes = PRINTED_UID):
    request = None
    for state in states:
        request = await card_requests.advance(conn, request_id, state, actor=OPERATOR,
                                              card_uid=uid if state == "PRINTED" else None)
    return request


async def test_the_whole_way_to_an_active_card_that_pays(client, conn):
    dossier, _ = await new_student(conn)
    request = await card_requests.submit(conn, dossier, actor=OPERATOR)
    assert (request.state, request.label_fr) == ("SUBMITTED", "Demande reçue")
    for state in PATH:
        request = await card_requests.advance(conn, request.id, state.lower().replace("_", "-"),
                                              actor=OPERATOR,
                                              card_uid=PRINTED_UID if state == "PRINTED" else None)
        assert (request.state, request.label_fr) == (state, LABELS[state])
    assert [(s.from_state, s.to_state, s.label_fr, s.actor) for s in request.history] == [
        (None, "SUBMITTED", "Demande reçue", OPERATOR),
        *[(a, b, LABELS[b], OPERATOR) for a, b in zip(["SUBMITTED", *PATH], PATH)]]
    card = await conn.fetchrow("SELECT c.*, b.dossier_number FROM cards c JOIN beneficiaries b"
                               " ON b.id = c.beneficiary_id WHERE c.id = $1", request.card_id)
    assert (card["uid"], card["status"], card["dossier_number"]) == (PRINTED_UID, "ACTIVE", dossier)
    assert card["card_number"] == request.card_number and card["card_number"].startswith("6331")

    # The new card pays once the establishment renewed the rights and the wallet was reloaded.
    assert (await client.purchase(PRINTED_UID, 1_00)).rc == "57"
    await conn.execute("INSERT INTO rights (beneficiary_id, school_year, renewed_by)"
                       " VALUES ($1, $2, 'test')", request.beneficiary_id, TEST_SCHOOL_YEAR)
    await conn.execute("SELECT reload_wallet($1, $2, 10000, 'test-first-card')",
                       request.beneficiary_id, TEST_SCHOOL_YEAR)
    assert (await client.purchase(PRINTED_UID, 1_00)).rc == "00"


@pytest.mark.parametrize("reached, target, allowed", [
    ("SUBMITTED", "PHOTO_CHECKED", "from SUBMITTED it can go to PREVALIDATED or REJECTED"),
    ("SUBMITTED", "ACTIVE", "from SUBMITTED it can go to PREVALIDATED or REJECTED"),
    ("SUBMITTED", "SUBMITTED", "from SUBMITTED it can go to PREVALIDATED or REJECTED"),
    ("PRINTED", "PREVALIDATED", "from PRINTED it can go to MAILED or REJECTED"),
    ("MAILED", "PRINTED", "from MAILED it can go to ACTIVE or REJECTED"),
    ("ACTIVE", "REJECTED", "ACTIVE is final"),
    ("REJECTED", "PREVALIDATED", "REJECTED is final"),
])
async def test_illegal_transitions_are_refused_and_change_nothing(conn, reached, target, allowed):
    dossier, _ = await new_student(conn)
    request = await card_requests.submit(conn, dossier, actor=OPERATOR)
    if reached == "REJECTED":
        await card_requests.advance(conn, request.id, "REJECTED", actor=OPERATOR, reason="Doublon")
    elif reached != "SUBMITTED":
        await walk(conn, request.id, PATH[:PATH.index(reached) + 1])
    before = await card_requests.get(conn, request.id)
    audit_rows = await conn.fetchval("SELECT count(*) FROM audit_log")
    with pytest.raises(Conflict, match=f"cannot go from {reached} to {target}: {allowed}"):
        await card_requests.advance(conn, request.id, target, actor=OPERATOR, reason="x",
                                    card_uid=bytes.fromhex("04010203040506"))
    assert await card_requests.get(conn, request.id) == before
    assert await conn.fetchval("SELECT count(*) FROM audit_log") == audit_rows


@pytest.mark.parametrize("reached", ["SUBMITTED", "PREVALIDATED", "PHOTO_CHECKED", "PRINTED", "MAILED"])
async def test_rejected_with_a_reason_from_any_state_before_active(conn, reached):
    dossier, _ = await new_student(conn)
    request = await card_requests.submit(conn, dossier, actor=OPERATOR)
    await walk(conn, request.id, PATH[:PATH.index(reached) + 1] if reached != "SUBMITTED" else [])
    with pytest.raises(Invalid, match="needs a reason"):
        await card_requests.advance(conn, request.id, "REJECTED", actor=OPERATOR, reason="  ")
    request = await card_requests.advance(conn, request.id, "REJECTED", actor=OPERATOR,
                                          reason=" Photo non conforme ")
    assert (request.state, request.rejection_reason) == ("REJECTED", "Photo non conforme")
    assert request.label_fr == "Demande refusée : Photo non conforme"
    assert request.history[-1].label_fr == "Demande refusée : Photo non conforme"
    assert request.history[-1].from_state == reached and request.card_id is None
    # A rejected request is over: the beneficiary may submit again.
    assert (await card_requests.submit(conn, dossier, actor=OPERATOR)).state == "SUBMITTED"


async def test_every_state_has_its_label_and_unknown_states_are_refused(conn):
    rows = await conn.fetch("SELECT state, card_request_label(state, 'motif') AS label"
                            " FROM card_request_states ORDER BY step")
    assert [r["state"] for r in rows] == list(STATES)
    assert {r["state"]: r["label"] for r in rows} == {**LABELS, "REJECTED": "Demande refusée : motif"}
    dossier, _ = await new_student(conn)
    request = await card_requests.submit(conn, dossier, actor=OPERATOR)
    with pytest.raises(Invalid, match="unknown card request state SHIPPED .one of SUBMITTED, PREVALIDATED"):
        await card_requests.advance(conn, request.id, "shipped", actor=OPERATOR)
    with pytest.raises(NotFound):
        await card_requests.advance(conn, 10**9, "PREVALIDATED", actor=OPERATOR)


async def test_printed_needs_the_card_uid_not_already_used(conn):
    dossier, _ = await new_student(conn)
    request = await card_requests.submit(conn, dossier, actor=OPERATOR)
    await walk(conn, request.id, ["PREVALIDATED", "PHOTO_CHECKED"])
    with pytest.raises(Invalid, match="PRINTED needs the printed card's UID"):
        await card_requests.advance(conn, request.id, "PRINTED", actor=OPERATOR)
    seeded_uid = await conn.fetchval("SELECT uid FROM cards ORDER BY id LIMIT 1")
    with pytest.raises(Conflict, match="already exists"):
        await card_requests.advance(conn, request.id, "PRINTED", actor=OPERATOR, card_uid=seeded_uid)
    with pytest.raises(Conflict, match="card number 6330000000000001 is already used"):
        await card_requests.advance(conn, request.id, "PRINTED", actor=OPERATOR,
                                    card_uid=PRINTED_UID, card_number="6330000000000001")
    request = await card_requests.advance(conn, request.id, "PRINTED", actor=OPERATOR,
                                          card_uid=PRINTED_UID, card_number="6330123400000009")
    assert (request.state, request.card_number, request.card_id) == ("PRINTED", "6330123400000009", None)


async def test_one_request_at_a_time_and_only_for_a_first_card(conn):
    dossier, _ = await new_student(conn)
    first = await card_requests.submit(conn, dossier, actor=OPERATOR)
    with pytest.raises(Conflict, match=f"already has card request {first.id} in progress .SUBMITTED."):
        await card_requests.submit(conn, dossier, actor=OPERATOR)
    await walk(conn, first.id, PATH)
    with pytest.raises(Conflict, match="already has a card: .* is replaced"):
        await card_requests.submit(conn, dossier, actor=OPERATOR)
    with pytest.raises(Conflict, match="already has a card"):     # a seeded student, lost card
        await card_requests.submit(conn, "HDF0000001", actor=OPERATOR)
    with pytest.raises(NotFound):
        await card_requests.submit(conn, "NOSUCH0001", actor=OPERATOR)


async def test_establishment_staff_pre_validate_their_own_students_only(conn):
    dossier, own = await new_student(conn, 1)
    other = await conn.fetchval("SELECT max(id) FROM establishments")
    request = await card_requests.submit(conn, dossier, actor=OPERATOR)
    with pytest.raises(OutOfScope, match="not for a student of your establishment"):
        await card_requests.advance(conn, request.id, "PREVALIDATED", actor=STAFF, establishment_id=other)
    request = await card_requests.advance(conn, request.id, "PREVALIDATED", actor=STAFF,
                                          establishment_id=own)
    assert request.history[-1].actor == STAFF
    with pytest.raises(OutOfScope, match="only pre-validates or rejects a submitted request"):
        await card_requests.advance(conn, request.id, "PHOTO_CHECKED", actor=STAFF, establishment_id=own)
    with pytest.raises(OutOfScope, match="only pre-validates or rejects"):
        await card_requests.advance(conn, request.id, "REJECTED", actor=STAFF, reason="x",
                                    establishment_id=own)
    second, _ = await new_student(conn, 2, own)
    request = await card_requests.submit(conn, second, actor=OPERATOR)
    request = await card_requests.advance(conn, request.id, "REJECTED", actor=STAFF,
                                          reason="Élève inconnu de l'établissement", establishment_id=own)
    assert request.label_fr == "Demande refusée : Élève inconnu de l'établissement"
    listed = await card_requests.list_requests(conn, establishment_id=own, state="rejected")
    assert [r.id for r in listed] == [request.id]


async def test_each_move_is_audited(conn):
    dossier, _ = await new_student(conn)
    request = await card_requests.submit(conn, dossier, actor=OPERATOR)
    await walk(conn, request.id, PATH[:3])
    rows = await conn.fetch("SELECT action, subject, before ->> 'state' AS before,"
                            " after ->> 'state' AS after FROM audit_log ORDER BY id")
    subject = f"card_request:{request.id}"
    assert [tuple(r) for r in rows] == [
        ("card_request.submit", subject, None, "SUBMITTED"),
        ("card_request.advance", subject, "SUBMITTED", "PREVALIDATED"),
        ("card_request.advance", subject, "PREVALIDATED", "PHOTO_CHECKED"),
        ("card_request.advance", subject, "PHOTO_CHECKED", "PRINTED")]
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="append-only"):
        await conn.execute("DELETE FROM card_request_history WHERE request_id = $1", request.id)


def test_the_cli_follows_a_request(dsn_with_student):
    dsn, dossier = dsn_with_student
    submitted = hdfpay(dsn, "card-requests", "submit", dossier)
    assert submitted.returncode == 0, submitted.stderr
    request_id = submitted.stdout.split()[1]
    assert "SUBMITTED: Demande reçue" in submitted.stdout
    illegal = hdfpay(dsn, "card-requests", "advance", request_id, "printed", "--uid", "04A1B2C3D4E5F6")
    assert illegal.returncode == 2 and "cannot go from SUBMITTED to PRINTED" in illegal.stderr
    assert "Traceback" not in illegal.stderr
    for state in ("prevalidated", "photo-checked"):
        assert hdfpay(dsn, "card-requests", "advance", request_id, state).returncode == 0
    printed = hdfpay(dsn, "card-requests", "advance", request_id, "printed", "--uid", "04A1B2C3D4E5F6")
    assert printed.returncode == 0 and "PRINTED: Carte imprimée" in printed.stdout
    rejected = hdfpay(dsn, "card-requests", "advance", request_id, "rejected", "--reason", "Adresse inconnue")
    assert "REJECTED: Demande refusée : Adresse inconnue" in rejected.stdout
    shown = hdfpay(dsn, "card-requests", "show", request_id)
    assert shown.stdout.count(f"cli:{getpass.getuser()}") == 5
    listed = hdfpay(dsn, "card-requests", "list", "--state", "rejected")
    assert f"{request_id}  {dossier}" in listed.stdout


@pytest.fixture
async def dsn_with_student(dsn, conn):
    dossier, _ = await new_student(conn)
    return dsn, dossier


def hdfpay(dsn: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hdfpay.cli", *args], capture_output=True,
                          text=True, timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL,
                          env={**os.environ, "DATABASE_URL": dsn})
