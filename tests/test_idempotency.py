"""(terminal, request id) is unique: a retry replays the stored answer byte for byte and debits
nothing; the same id with other content is a duplicate (94); a decline stays a decline."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from terminal_protocol.codec import decode_response, encode_request
from terminal_protocol.messages import PROTOCOL_VERSION, Purchase
from ledger.demo_region import card_uid

from conftest import balance_of, set_balance

ORDINARY = card_uid(5)
UNGATED_IN_FLIGHT_PER_CARD = 1_000    # more than any crowd these tests send


@pytest.fixture
def settings(settings):
    """The ledger's own guarantees under a crowd on one card, without the server's per-card gate
    (authorizer/card_gate.py) in front of it: they must hold without it."""
    return dataclasses.replace(settings, max_in_flight_per_card=UNGATED_IN_FLIGHT_PER_CARD)


async def test_retry_replays_the_same_bytes_and_debits_once(client, conn):
    before = await balance_of(conn, ORDINARY)
    body = encode_request(client.purchase_request(ORDINARY, 9_99))
    first = await client.send_raw(body)
    again = await client.send_raw(body)
    assert first == again
    assert decode_response(first).rc == "00"
    assert await balance_of(conn, ORDINARY) == before - 9_99
    assert await conn.fetchval("SELECT count(*) FROM transfers WHERE code = 'PURCHASE'") == 1


async def test_retry_with_other_spacing_is_still_the_same_message(client, conn):
    request = client.purchase_request(ORDINARY, 5_00)
    first = await client.send_raw(encode_request(request))
    spaced = encode_request(request).replace(b",", b", ")
    assert await client.send_raw(spaced) == first


async def test_same_request_id_with_other_content_is_a_duplicate(client, conn):
    request = client.purchase_request(ORDINARY, 5_00)
    assert (await client.send(request)).rc == "00"
    changed = Purchase(v=PROTOCOL_VERSION, request_id=request.request_id, stan=request.stan,
                       card_uid=request.card_uid, amount_cents=6_00, local_time=request.local_time,
                       partial_ok=request.partial_ok)
    duplicate = await client.send(changed)
    assert (duplicate.rc, duplicate.approved_cents) == ("94", 0)
    assert await conn.fetchval("SELECT sum(amount_cents) FROM transfers WHERE code = 'PURCHASE'") == 5_00


async def test_a_decline_stays_a_decline_after_funds_arrive(client, conn):
    await set_balance(conn, ORDINARY, 1_00)
    request = client.purchase_request(ORDINARY, 2_00, partial_ok=False)
    assert (await client.send(request)).rc == "51"
    await set_balance(conn, ORDINARY, 50_00)
    assert (await client.send(request)).rc == "51"
    assert await balance_of(conn, ORDINARY) == 50_00


async def test_retry_storm_on_one_request_debits_once(client, conn):
    """50 transmissions of one purchase at once, each under its own KSN. Those overtaken by a
    higher counter are refused (63); every other one gets the one stored answer."""
    before = await balance_of(conn, ORDINARY)
    body = encode_request(client.purchase_request(ORDINARY, 3_00))
    answers = await asyncio.gather(*(client.send_raw(body) for _ in range(50)))
    stored = {a for a in answers if decode_response(a).rc != "63"}
    assert len(stored) == 1
    assert decode_response(stored.pop()).rc == "00"
    assert await balance_of(conn, ORDINARY) == before - 3_00
    assert await conn.fetchval("SELECT count(*) FROM authorizations") == 1


async def test_request_ids_are_per_terminal(terminal, conn):
    from ledger.demo_region import terminal_id
    async with terminal(terminal_id(2, 1)) as a, terminal(terminal_id(3, 1)) as b:
        ra = await a.purchase(ORDINARY, 1_00, request_id="same-id-0001")
        rb = await b.purchase(ORDINARY, 1_00, request_id="same-id-0001")
    assert (ra.rc, rb.rc) == ("00", "00")
    assert rb.balance_cents == ra.balance_cents - 1_00
