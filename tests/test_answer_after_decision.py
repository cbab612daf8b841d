"""Nothing after the ledger's decision may delay or lose the answer: the outcome's bookkeeping
failing, an exception nobody foresaw, or the HSM failing to MAC the answer each still give the
terminal one JSON answer, MAC'd whenever the server can MAC it."""

from __future__ import annotations

import json

import aiohttp

from hdfpay.server import running_server
from hsm.interface import HsmError
from ledger.demo_region import card_uid
from terminal_protocol.codec import encode_request
from terminal_protocol.transport import KSN_HEADER, MAC_HEADER, TERMINAL_ID_HEADER, TERMINAL_PATH

from conftest import ACTIVE_TERMINAL, balance_of

CARD = card_uid(5)


class _HsmThatCannotMacAnswers:
    """The session's HSM, except that MAC'ing an answer fails (a token unplugged after the
    request's MAC was verified)."""

    def __init__(self, hsm) -> None:
        self._hsm = hsm

    def __getattr__(self, name):
        return getattr(self._hsm, name)

    def generate_dukpt_response_mac(self, *args) -> bytes:
        raise HsmError("token removed")


async def _signed_post(url: str, keys, body: bytes) -> tuple[int, str, bytes, str | None]:
    ksn, mac = keys.sign_request("POST", TERMINAL_PATH, body)
    headers = {TERMINAL_ID_HEADER: ACTIVE_TERMINAL, KSN_HEADER: ksn.hex().upper(),
               MAC_HEADER: mac.hex().upper(), "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        async with session.post(url + TERMINAL_PATH, data=body, headers=headers) as reply:
            return reply.status, reply.content_type, await reply.read(), reply.headers.get(MAC_HEADER)


async def test_an_approved_sale_keeps_its_signed_answer_when_its_bookkeeping_fails(client, conn):
    """The approved-amount metric looks up the terminal's partner category; that lookup
    failing (here its column renamed away) must not turn the approved sale into a 500."""
    await conn.execute("ALTER TABLE partners RENAME COLUMN category TO category_moved")
    before = await balance_of(conn, CARD)
    response = await client.purchase(CARD, 3_00)          # the client checks the answer's MAC
    assert (response.rc, response.approved_cents) == ("00", 3_00)
    assert await balance_of(conn, CARD) == before - 3_00
    await conn.execute("ALTER TABLE partners RENAME COLUMN category_moved TO category")


async def test_an_unforeseen_exception_gets_a_signed_96(client, conn):
    """Here the ledger function answers NULL, which the store never expects."""
    await conn.execute(
        "CREATE OR REPLACE FUNCTION authorize_purchase(p_terminal_id text, p_request_id text,"
        " p_request_hash bytea, p_stan integer, p_card_uid bytea, p_amount_cents bigint,"
        " p_terminal_local_time timestamp, p_partial_ok boolean, p_initial_key_id bytea,"
        " p_ksn_counter bigint) RETURNS text LANGUAGE sql AS 'SELECT NULL::text'")
    response = await client.purchase(CARD, 1_00)          # the client checks the answer's MAC
    assert (response.type, response.rc) == ("error", "96")


async def test_an_answer_the_hsm_cannot_mac_is_still_json(settings, dsn, hsm, keys_for, client):
    async with running_server(settings, dsn, _HsmThatCannotMacAnswers(hsm)) as server:
        body = encode_request(client.purchase_request(CARD, 1_00))
        status, content_type, answer, mac = await _signed_post(server.url, keys_for(ACTIVE_TERMINAL),
                                                               body)
    assert (status, content_type, mac) == (503, "application/json", None)
    assert json.loads(answer)["rc"] == "91"
