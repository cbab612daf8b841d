"""The operator API of cards, first-card requests and partners: who may call what (every endpoint
refused with 403 to the other roles and 401 without a token, changing nothing), the scopes of
establishment staff and partners, and each operation with its errors as JSON."""

from __future__ import annotations

import pytest

from backoffice.operator_auth import Role
from ledger.demo_region import card_uid
from operator_fixtures import assert_roles_refused, ops_call as call

from conftest import balance_of, set_balance

REGION, STAFF, PARTNER, AUDITOR = (Role.REGION_OPERATOR, Role.ESTABLISHMENT_STAFF, Role.PARTNER,
                                   Role.AUDITOR)
NEW_UID = "04EE000000000B"
# (method, path, body) → the roles allowed; every other role gets 403, no token 401.
ENDPOINTS = [
    ("GET", "/v1/ops/cards/HDF0000005", None, {REGION, AUDITOR}),
    ("POST", "/v1/ops/cards/HDF0000005/opposition", {"reason": "lost"}, {REGION}),
    ("POST", "/v1/ops/cards/HDF0000005/replacement", {"uid": NEW_UID, "reason": "lost"}, {REGION}),
    ("POST", "/v1/ops/card-requests", {"dossier_number": "HDF0000005"}, {REGION}),
    ("GET", "/v1/ops/card-requests", None, {REGION, AUDITOR, STAFF}),
    ("GET", "/v1/ops/card-requests/1", None, {REGION, AUDITOR, STAFF}),
    ("POST", "/v1/ops/card-requests/1/transitions", {"state": "PREVALIDATED"}, {REGION, STAFF}),
    ("GET", "/v1/ops/partners", None, {REGION, AUDITOR}),
    ("POST", "/v1/ops/partners", {"name": "X", "category": "BOOKSHOP", "address": "1 rue A",
                                  "latitude": 50.0, "longitude": 3.0}, {REGION}),
    ("GET", "/v1/ops/partners/near?lat=50.63&lon=3.06", None, set(Role)),
    ("GET", "/v1/ops/partners/1", None, {REGION, AUDITOR, PARTNER}),
    ("PATCH", "/v1/ops/partners/1", {"name": "Y"}, {REGION}),
    ("POST", "/v1/ops/partners/1/status", {"status": "SUSPENDED"}, {REGION}),
]



async def test_the_role_matrix(ops_client, conn):
    audit_rows = await conn.fetchval("SELECT count(*) FROM audit_log")
    audit_rows += await assert_roles_refused(ops_client, ENDPOINTS)   # one account per role
    assert await conn.fetchval("SELECT count(*) FROM audit_log") == audit_rows
    assert await conn.fetchval("SELECT count(*) FROM cards WHERE status <> 'ACTIVE'") == \
        await conn.fetchval("SELECT count(*) FROM cards WHERE opposed_at IS NOT NULL")


async def test_oppose_and_replace(ops_client, conn):
    await set_balance(conn, card_uid(5), 3_00)
    async with ops_client(REGION) as region:
        status, answer = await call(region, "POST", "/v1/ops/cards/6330000000000006/opposition",
                                    {"reason": "stolen"})
        assert (status, answer["card"]["status"]) == (200, "STOLEN")
        status, answer = await call(region, "POST", "/v1/ops/cards/6330000000000006/opposition",
                                    {"reason": "lost"})
        assert status == 409 and "irreversible" in answer["error"]
        status, answer = await call(region, "POST", "/v1/ops/cards/HDF0000005/replacement",
                                    {"uid": NEW_UID, "reason": "damaged"})
        assert status == 201, answer
        replacement = answer["replacement"]
        assert {k: replacement[k] for k in ("reason", "fee_cents", "fee_taken_cents",
                                            "fee_pending_cents")} == {
            "reason": "DAMAGED", "fee_cents": 5_00, "fee_taken_cents": 3_00, "fee_pending_cents": 2_00}
        status, answer = await call(region, "GET", "/v1/ops/cards/HDF0000005")
        # The one canonical form of a UID, the terminal protocol's: upper-case hex.
        assert (answer["card"]["uid_hex"], answer["card"]["replaces_card_id"]) == (
            NEW_UID.upper(), replacement["old_card_id"])
        status, answer = await call(region, "POST", "/v1/ops/cards/6330000000000006/replacement",
                                    {"uid": NEW_UID.lower(), "reason": "stolen"})
        assert status == 409 and NEW_UID.upper() in answer["error"]
        for body, expected in [({"uid": "zz"}, 400), ({"uid": NEW_UID}, 409), ({}, 400),
                               ({"uid": 7}, 400)]:
            assert (await call(region, "POST", "/v1/ops/cards/6330000000000005/replacement", body))[0] == expected
        status, answer = await call(region, "POST", "/v1/ops/cards/HDF0000050/replacement",
                                    {"uid": "04EE000000000C", "reason": "lost"})
        assert status == 409 and "not renewed" in answer["error"]
        assert (await call(region, "GET", "/v1/ops/cards/NOSUCH0001"))[0] == 404
        actor = await conn.fetchval("SELECT actor FROM audit_log WHERE action = 'card.replace'")
    assert actor.startswith("region_operator:test-region-operator-")
    assert await balance_of(conn, card_uid(5)) == 0


async def new_student(conn, establishment_id: int) -> str:
    await conn.execute(
        "INSERT INTO beneficiaries (dossier_number, last_name, first_name, birth_date, email,"
        " establishment_id) VALUES ('NEW0000001', 'Nouvel', 'Élève', '2010-03-01',"
        " 'nouvel@exemple.fr', $1)", establishment_id)
    return "NEW0000001"


async def test_card_requests_with_the_establishment_scope(ops_client, conn):
    dossier = await new_student(conn, 1)
    async with ops_client(REGION) as region, ops_client(STAFF, establishment_id=1) as own, \
            ops_client(STAFF, establishment_id=2) as other:
        status, answer = await call(region, "POST", "/v1/ops/card-requests", {"dossier_number": dossier})
        assert (status, answer["card_request"]["label_fr"]) == (201, "Demande reçue")
        path = f"/v1/ops/card-requests/{answer['card_request']['id']}"
        assert (await call(other, "GET", path))[0] == 403
        assert (await call(other, "POST", path + "/transitions", {"state": "PREVALIDATED"}))[0] == 403
        assert (await call(other, "GET", "/v1/ops/card-requests"))[1] == {"card_requests": []}
        status, answer = await call(own, "POST", path + "/transitions", {"state": "prevalidated"})
        assert (status, answer["card_request"]["label_fr"]) == (200, "Validée par l'établissement")
        status, answer = await call(own, "POST", path + "/transitions", {"state": "PHOTO_CHECKED"})
        assert status == 403 and "only pre-validates" in answer["error"]
        assert len((await call(own, "GET", "/v1/ops/card-requests"))[1]["card_requests"]) == 1
        status, answer = await call(region, "POST", path + "/transitions", {"state": "MAILED"})
        assert status == 409 and "from PREVALIDATED it can go to PHOTO_CHECKED or REJECTED" in answer["error"]
        await call(region, "POST", path + "/transitions", {"state": "PHOTO_CHECKED"})
        assert (await call(region, "POST", path + "/transitions", {"state": "PRINTED"}))[0] == 400
        status, answer = await call(region, "POST", path + "/transitions",
                                    {"state": "REJECTED", "reason": "Photo floue"})
        assert answer["card_request"]["label_fr"] == "Demande refusée : Photo floue"
        status, answer = await call(own, "GET", path)
        assert [s["label_fr"] for s in answer["card_request"]["history"]] == [
            "Demande reçue", "Validée par l'établissement", "Photo vérifiée",
            "Demande refusée : Photo floue"]
        assert (await call(region, "GET", "/v1/ops/card-requests/999999"))[0] == 404
        assert (await call(region, "POST", "/v1/ops/card-requests", {"dossier_number": "HDF0000005"}))[0] == 409


async def test_partners_and_the_search(ops_client, conn):
    async with ops_client(REGION) as region, ops_client(PARTNER, partner_id=2) as shop:
        body = {"name": "Librairie du Beffroi", "category": "BOOKSHOP", "address": "3 Grand-Place, Lille",
                "latitude": 50.6372, "longitude": 3.0633}
        status, answer = await call(region, "POST", "/v1/ops/partners", body)
        assert (status, answer["partner"]["status"], answer["partner"]["terminals"]) == (201, "ACTIVE", [])
        partner_id = answer["partner"]["id"]
        for bad in ({**body, "latitude": "north"}, {**body, "category": "BAKERY"}, {"name": "x"}):
            assert (await call(region, "POST", "/v1/ops/partners", bad))[0] == 400
        status, answer = await call(shop, "GET", "/v1/ops/partners/near?lat=50.6365&lon=3.0635&radius_m=1000")
        assert status == 200
        assert [p["id"] for p in answer["partners"]] == [1, partner_id, 2]
        assert answer["partners"][0]["distance_m"] == 0
        status, answer = await call(shop, "GET", "/v1/ops/partners/near?lat=50.6365&lon=3.0635"
                                                 "&radius_m=1000&category=EQUIPMENT")
        assert answer["partners"] == []
        for query in ("lat=50", "lat=x&lon=3", "lat=50&lon=3&radius_m=1000000", "lat=50&lon=3&category=Z"):
            assert (await call(shop, "GET", f"/v1/ops/partners/near?{query}"))[0] == 400
        assert (await call(shop, "GET", "/v1/ops/partners/2"))[0] == 200
        assert (await call(shop, "GET", "/v1/ops/partners/1"))[0] == 403
        status, answer = await call(region, "PATCH", f"/v1/ops/partners/{partner_id}", {"latitude": 50.7})
        assert (status, answer["partner"]["latitude"], answer["partner"]["name"]) == (200, 50.7, body["name"])
        assert (await call(region, "PATCH", f"/v1/ops/partners/{partner_id}", {"iban": "x"}))[0] == 400
        status, answer = await call(region, "POST", "/v1/ops/partners/2/status", {"status": "SUSPENDED"})
        assert answer["partner"]["status"] == "SUSPENDED"
        near = await call(shop, "GET", "/v1/ops/partners/near?lat=50.6365&lon=3.0635&radius_m=1000")
        assert [p["id"] for p in near[1]["partners"]] == [1]
        await call(region, "POST", f"/v1/ops/partners/{partner_id}/status", {"status": "CLOSED"})
        status, answer = await call(region, "POST", f"/v1/ops/partners/{partner_id}/status", {"status": "ACTIVE"})
        assert status == 409 and "closed" in answer["error"]
        assert (await call(region, "GET", "/v1/ops/partners/99999"))[0] == 404
        status, answer = await call(region, "GET", "/v1/ops/partners?status=SUSPENDED")
        assert {p["id"] for p in answer["partners"]} == {2, 11}
        assert ["TERM-0002-1", "ACTIVE"] in next(p for p in answer["partners"] if p["id"] == 2)["terminals"]


@pytest.mark.parametrize("path", ["/v1/ops/partners/abc", "/v1/ops/card-requests/abc"])
async def test_malformed_ids_are_json_404s(ops_client, path):
    async with ops_client(REGION) as region:
        status, answer = await call(region, "GET", path)
    assert status == 404 and "error" in answer
