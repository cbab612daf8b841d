"""Only a provisioned terminal can debit, each message once, and a terminal can tell the server's
answer from a forged one. Each attack is refused with the right code and moves no money."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import json
import logging
import ssl

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hdfpay.config import ConfigError
from backoffice.provisioning import rotate_terminal_key, set_terminal_status
from hdfpay.server import running_server
from hsm.interface import KeyBlockError
from ledger.demo_region import card_uid, terminal_id
from terminal_protocol.client import TerminalClient
from terminal_protocol.codec import encode_request
from terminal_protocol.ksn_counter import MemoryCounter
from terminal_protocol.messages import BatchTotals
from terminal_protocol.terminal_keys import ForgedResponse, TerminalKeys
from terminal_protocol.transport import (
    KSN_HEADER, MAC_HEADER, TERMINAL_ID_HEADER, TERMINAL_PATH,
)

from conftest import ACTIVE_TERMINAL, balance_of

CARD = card_uid(5)


def _headers(terminal: str, ksn: bytes, mac: bytes) -> dict:
    return {TERMINAL_ID_HEADER: terminal, KSN_HEADER: ksn.hex().upper(),
            MAC_HEADER: mac.hex().upper(), "Content-Type": "application/json"}


async def _post(url: str, body: bytes, headers: dict) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url + TERMINAL_PATH, data=body, headers=headers) as reply:
            return reply.status, json.loads(await reply.read())


async def _nothing_moved(conn, before: int) -> None:
    assert await balance_of(conn, CARD) == before
    assert await conn.fetchval("SELECT count(*) FROM transfers WHERE code = 'PURCHASE'") == 0


def _purchase_body(client: TerminalClient, amount_cents: int = 5_00) -> bytes:
    return encode_request(client.purchase_request(CARD, amount_cents))


async def test_a_forged_mac_is_refused(server, client, keys_for, conn):
    before = await balance_of(conn, CARD)
    body = _purchase_body(client)
    ksn, mac = keys_for(ACTIVE_TERMINAL).sign_request("POST", TERMINAL_PATH, body)
    forged = bytes(b ^ 0x01 for b in mac)
    status, answer = await _post(server.url, body, _headers(ACTIVE_TERMINAL, ksn, forged))
    assert (status, answer["rc"]) == (401, "63")
    await _nothing_moved(conn, before)


async def test_a_mac_over_another_body_is_refused(server, client, keys_for, conn):
    before = await balance_of(conn, CARD)
    signed = _purchase_body(client, 1_00)
    ksn, mac = keys_for(ACTIVE_TERMINAL).sign_request("POST", TERMINAL_PATH, signed)
    altered = signed.replace(b'"amount_cents":100', b'"amount_cents":9900')
    assert altered != signed
    status, answer = await _post(server.url, altered, _headers(ACTIVE_TERMINAL, ksn, mac))
    assert (status, answer["rc"]) == (401, "63")
    await _nothing_moved(conn, before)


async def test_a_replayed_request_is_refused(server, client, keys_for, conn):
    body = _purchase_body(client, 2_00)
    ksn, mac = keys_for(ACTIVE_TERMINAL).sign_request("POST", TERMINAL_PATH, body)
    headers = _headers(ACTIVE_TERMINAL, ksn, mac)
    first_status, first = await _post(server.url, body, headers)
    assert (first_status, first["rc"]) == (200, "00")
    after_first = await balance_of(conn, CARD)
    status, replay = await _post(server.url, body, headers)
    assert (status, replay["rc"]) == (200, "63")
    assert await balance_of(conn, CARD) == after_first


async def test_a_counter_going_backwards_is_refused(server, keys_for, conn):
    ahead = keys_for(ACTIVE_TERMINAL)
    behind = TerminalKeys(ahead.initial_key_id, ahead._initial_key, MemoryCounter())
    for _ in range(10):
        ahead._counter.next()
    async with TerminalClient(server.url, ACTIVE_TERMINAL, ahead) as fresh, \
               TerminalClient(server.url, ACTIVE_TERMINAL, behind) as stale:
        assert (await fresh.purchase(CARD, 1_00)).rc == "00"
        before = await balance_of(conn, CARD)
        assert (await stale.purchase(CARD, 1_00)).rc == "63"
    assert await balance_of(conn, CARD) == before


async def test_another_terminals_key_is_refused(server, keys_for, conn):
    """A genuine MAC, but the key belongs to another terminal than the one named."""
    before = await balance_of(conn, CARD)
    async with TerminalClient(server.url, terminal_id(2, 1), keys_for(ACTIVE_TERMINAL)) as impostor:
        assert (await impostor.purchase(CARD, 1_00)).rc == "63"
    await _nothing_moved(conn, before)


UNKNOWN_TERMINAL = "NO-SUCH-TERMINAL"


async def test_an_unknown_terminal_id_with_another_terminals_key_is_a_security_violation(
        server, keys_for, conn):
    """A genuine MAC under a real terminal's key, sent as a terminal id the region never
    provisioned: the key does not belong to the terminal named, as for a known one (63, as
    PROTOCOL.md says), not 'terminal not allowed' (58), and whatever the message type."""
    before = await balance_of(conn, CARD)
    async with TerminalClient(server.url, UNKNOWN_TERMINAL, keys_for(ACTIVE_TERMINAL)) as impostor:
        answers = [await impostor.purchase(CARD, 1_00), await impostor.reversal("a" * 32),
                   await impostor.refund("633000000001", 1_00, CARD),
                   await impostor.batch_close(BatchTotals())]
    assert [a.rc for a in answers] == ["63"] * 4
    await _nothing_moved(conn, before)
    assert await conn.fetchval("SELECT count(*) FROM authorizations") == 0


async def test_an_unsigned_request_is_refused(server, conn):
    before = await balance_of(conn, CARD)
    async with TerminalClient(server.url, ACTIVE_TERMINAL) as unsigned:
        response = await unsigned.purchase(CARD, 1_00)
    assert (response.type, response.rc) == ("error", "30")
    await _nothing_moved(conn, before)


async def test_the_wrong_dukpt_key_usage_is_refused(server, client, keys_for, conn):
    """MAC'd with the response (MAC verification) key instead of the request key."""
    from cryptography.hazmat.primitives.ciphers.algorithms import AES
    from cryptography.hazmat.primitives.cmac import CMAC
    from hsm import dukpt
    from terminal_protocol.transport import request_mac_input
    before = await balance_of(conn, CARD)
    keys = keys_for(ACTIVE_TERMINAL)
    body = _purchase_body(client)
    ksn = keys.initial_key_id + (1000).to_bytes(4, "big")
    wrong_key = dukpt.derive_working_key(keys._initial_key, ksn, dukpt.KeyUsage.MAC_VERIFICATION)
    cmac = CMAC(AES(wrong_key))
    cmac.update(request_mac_input("POST", TERMINAL_PATH, ksn, body))
    status, answer = await _post(server.url, body,
                                 _headers(ACTIVE_TERMINAL, ksn, cmac.finalize()[:8]))
    assert (status, answer["rc"]) == (401, "63")
    await _nothing_moved(conn, before)


async def test_a_revoked_terminal_is_declined(terminal, conn):
    await set_terminal_status(conn, ACTIVE_TERMINAL, "REVOKED")
    async with terminal(ACTIVE_TERMINAL) as revoked:
        assert (await revoked.purchase(CARD, 1_00)).rc == "58"
    with pytest.raises(Exception, match="revoked"):
        await set_terminal_status(conn, ACTIVE_TERMINAL, "ACTIVE")


def test_a_tampered_key_block_is_refused(deliveries, template_database):
    delivered, transport_key = deliveries[ACTIVE_TERMINAL]
    block = delivered.key_block
    tampered = block[:-1] + ("0" if block[-1] != "0" else "1")
    with pytest.raises(KeyBlockError):
        TerminalKeys.from_key_block(tampered, transport_key, MemoryCounter())
    with pytest.raises(KeyBlockError):
        TerminalKeys.from_key_block(block, bytes(16), MemoryCounter())


async def test_rotation_without_downtime(server, conn, hsm, keys_for, deliveries):
    old = keys_for(ACTIVE_TERMINAL)
    rotated = await rotate_terminal_key(conn, hsm, ACTIVE_TERMINAL)
    _, transport_key = deliveries[ACTIVE_TERMINAL]
    new = TerminalKeys.from_key_block(rotated.key_block, transport_key, MemoryCounter(),
                                      rotated.initial_key_id)
    assert new.initial_key_id != old.initial_key_id
    async with TerminalClient(server.url, ACTIVE_TERMINAL, old) as before_switch:
        assert (await before_switch.purchase(CARD, 1_00)).rc == "00"      # old key still works
    async with TerminalClient(server.url, ACTIVE_TERMINAL, new) as switched:
        assert (await switched.purchase(CARD, 1_00)).rc == "00"
    async with TerminalClient(server.url, ACTIVE_TERMINAL, old) as stale:
        assert (await stale.purchase(CARD, 1_00)).rc == "63"              # retired by first use


def _turn_decline_into_approval(status: int, body: bytes, mac: str) -> tuple[int, bytes, str]:
    return 200, body.replace(b'"rc":"41"', b'"rc":"00"'), mac


def _hide_approval_behind_an_error(status: int, body: bytes, mac: str) -> tuple[int, bytes, str]:
    return 401, b'{"v":1,"type":"error","rc":"63","detail":"message authentication failed"}', ""


@pytest.mark.parametrize("uid, tamper", [
    (card_uid(1), _turn_decline_into_approval),       # lost card: really 41
    (CARD, _hide_approval_behind_an_error),           # really approved: the till must reverse
])
async def test_a_response_forged_in_the_middle_is_rejected_by_the_terminal(server, client, uid, tamper):
    """A man in the middle rewrites the server's answer: the terminal refuses it as no answer."""
    async def relay(request: web.Request) -> web.Response:
        async with aiohttp.ClientSession() as session:
            async with session.post(server.url + TERMINAL_PATH, data=await request.read(),
                                    headers=request.headers) as reply:
                status, body, mac = tamper(reply.status, await reply.read(),
                                           reply.headers.get(MAC_HEADER, ""))
        return web.Response(status=status, body=body, content_type="application/json",
                            headers={MAC_HEADER: mac} if mac else {})
    app = web.Application()
    app.router.add_post(TERMINAL_PATH, relay)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        async with TerminalClient(f"http://127.0.0.1:{port}", ACTIVE_TERMINAL,
                                  client._keys) as fooled:
            with pytest.raises(ForgedResponse):
                await fooled.purchase(uid, 1_00)
    finally:
        await runner.cleanup()


async def test_keys_and_secrets_never_reach_the_logs(server, client, keys_for, keystore_env, caplog):
    caplog.set_level(logging.DEBUG)
    keys = keys_for(ACTIVE_TERMINAL)
    await client.purchase(CARD, 1_00)
    body = _purchase_body(client)
    ksn, mac = keys.sign_request("POST", TERMINAL_PATH, body)
    await _post(server.url, body, _headers(ACTIVE_TERMINAL, ksn, bytes(8)))    # logged refusal
    text = caplog.text.upper()
    assert "REQUEST REFUSED BEFORE AUTHENTICATION" in text
    for secret in [keys._initial_key.hex(), keystore_env["HDFPAY_KEYSTORE_PASSPHRASE"]]:
        assert secret.upper() not in text
    assert keys._initial_key.hex() not in repr(keys).lower()


def _self_signed(tmp_path) -> tuple[str, str, ssl.SSLContext]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    trust = ssl.create_default_context(cafile=str(cert_file))
    return str(cert_file), str(key_file), trust


async def test_the_server_speaks_tls(settings, dsn, hsm, keys_for, tmp_path):
    cert, key, trust = _self_signed(tmp_path)
    secure = dataclasses.replace(settings, tls_cert_file=cert, tls_key_file=key)
    async with running_server(secure, dsn, hsm) as server:
        assert server.url.startswith("https://")
        async with TerminalClient(server.url, ACTIVE_TERMINAL, keys_for(ACTIVE_TERMINAL),
                                  ssl_context=trust) as till:
            assert (await till.purchase(CARD, 1_00)).rc == "00"


@pytest.mark.parametrize("changes, message", [
    ({"host": "0.0.0.0"}, "without TLS"),
    ({"terminal_authentication": "none", "host": "0.0.0.0", "allow_plain_http": True}, "refused off loopback"),
    ({"terminal_authentication": "none", "allow_plain_http": True}, "behind a proxy"),
    ({"tls_cert_file": "/x.pem"}, "both"),
])
async def test_insecure_settings_are_refused(settings, dsn, hsm, changes, message):
    with pytest.raises(ConfigError, match=message):
        async with running_server(dataclasses.replace(settings, **changes), dsn, hsm):
            pass


async def test_a_terminal_keyed_by_the_pkcs11_backend_buys_end_to_end(settings, dsn, conn, pkcs11_hsm):
    """The whole chain on SoftHSM2: BDK generated in the token, the terminal's initial key
    derived there and delivered as a TR-31 block, requests verified and answers MAC'd by it."""
    from backoffice.provisioning import add_terminal, new_bdk
    bdk = new_bdk(pkcs11_hsm)
    try:
        delivered = await add_terminal(conn, pkcs11_hsm, "P11-0001", partner_id=1)
        await set_terminal_status(conn, "P11-0001", "ACTIVE")
        keys = TerminalKeys.from_key_block(delivered.key_block, delivered.transport_key,
                                           MemoryCounter())
        async with running_server(settings, dsn, pkcs11_hsm) as server, \
                   TerminalClient(server.url, "P11-0001", keys) as till:
            response = await till.purchase(CARD, 3_00)
            assert response.rc == "00"
            assert (await till.reversal(response.request_id)).approved_cents == 3_00
    finally:
        for key in pkcs11_hsm.list_keys():       # the token is shared by the session's tests
            if key.alias in (bdk.alias, "kbpk/p11-0001"):
                pkcs11_hsm.destroy_key(key.alias)
