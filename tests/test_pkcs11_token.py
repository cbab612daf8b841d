"""What only the PKCS#11 backend has: keys inside the token, sessions, the PIN."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import pytest
from pkcs11 import Attribute, ObjectClass

from hsm import dukpt, pkcs11_backend
from hsm.interface import HsmError, KeyUsage
from hsm_fixtures import KNOWN_BDK, KNOWN_INITIAL_KEY_ID, import_known, terminal_mac

REQUEST = dukpt.KeyUsage.MAC_GENERATION
RESPONSE = dukpt.KeyUsage.MAC_VERIFICATION
DATA = b'POST /v1/authorize {"amount_cents":450,"card":"04782E21801D80"}'


def ksn(counter: int, initial_key_id: bytes = KNOWN_INITIAL_KEY_ID) -> bytes:
    return dukpt.build_ksn(initial_key_id, counter)


@pytest.fixture
def token(pkcs11_hsm):
    yield pkcs11_hsm
    for info in pkcs11_hsm.list_keys():
        pkcs11_hsm.destroy_key(info.alias)


def token_object(token, alias: str):
    return token._session.get_key(object_class=ObjectClass.SECRET_KEY, label=alias)


def session_objects(token) -> int:
    return len(list(token._session.get_objects({Attribute.TOKEN: False})))


def test_token_keys_are_sensitive_and_hold_only_their_capability(token):
    token.generate_key("gen/bdk", KeyUsage.BDK)
    token.generate_key("gen/mac", KeyUsage.MAC)
    import_known(token, "imp/bdk", KeyUsage.BDK, KNOWN_BDK)
    expected = {"gen/bdk": (False, True), "gen/mac": (True, False), "imp/bdk": (False, True),
                "imp/bdk.kbpk": (False, False)}
    for alias, (sign, derive) in expected.items():
        key = token_object(token, alias)
        assert key[Attribute.SENSITIVE] and not key[Attribute.EXTRACTABLE], alias
        assert (key[Attribute.SIGN], key[Attribute.DERIVE]) == (sign, derive), alias
        assert not (key[Attribute.ENCRYPT] or key[Attribute.WRAP] or key[Attribute.UNWRAP])
    assert not token_object(token, "imp/bdk")[Attribute.MODIFIABLE]
    assert not token_object(token, "gen/bdk")[Attribute.COPYABLE]
    assert json.loads(token_object(token, "gen/bdk")[Attribute.ID])["usage"] == "B0"


def test_dukpt_session_objects_stay_bounded(token):
    import_known(token, "region/bdk", KeyUsage.BDK, KNOWN_BDK)
    before = session_objects(token)
    counter = 0
    for _ in range(100):
        counter = dukpt.next_valid_counter(counter)
        token.verify_dukpt_request_mac("region/bdk", ksn(counter), DATA,
                                       terminal_mac(ksn(counter), DATA, REQUEST))
        token.generate_dukpt_response_mac("region/bdk", ksn(counter), DATA)
    # the cached initial key and the ladder of the last counter, nothing else
    assert session_objects(token) - before == 1 + len(dukpt.ladder(counter))
    token.destroy_key("region/bdk")
    assert session_objects(token) == before


def test_transport_key_value_is_dropped_after_the_hold(token, monkeypatch):
    import_known(token, "region/bdk", KeyUsage.BDK, KNOWN_BDK)
    later = time.monotonic() + pkcs11_backend.TRANSPORT_KEY_HOLD_SECONDS + 1
    monkeypatch.setattr(pkcs11_backend.time, "monotonic", lambda: later)
    with pytest.raises(HsmError, match="no longer held"):
        token.export_dukpt_initial_key("region/bdk", KNOWN_INITIAL_KEY_ID, "region/bdk.kbpk")


def test_pin_is_never_logged_nor_shown(token, softhsm_environment, caplog):
    pin = softhsm_environment[pkcs11_backend.PIN_VARIABLE]
    caplog.set_level(logging.DEBUG)
    import_known(token, "region/bdk", KeyUsage.BDK, KNOWN_BDK)
    with pytest.raises(HsmError) as raised:
        token.import_key_block("region/bdk", "garbage", "region/bdk.kbpk")
    token.destroy_key("region/bdk")
    assert "stored key region/bdk (B0" in caplog.text and "destroyed key" in caplog.text
    for text in (caplog.text, str(raised.value), repr(token)):
        assert pin not in text


def test_other_processes_log_in_by_themselves_and_a_wrong_pin_is_not_echoed(
        softhsm_environment):
    pin = softhsm_environment[pkcs11_backend.PIN_VARIABLE]
    script = ("import logging, sys; logging.basicConfig(level=logging.DEBUG)\n"
              "from hsm.config import open_hsm_from_env\n"
              "hsm = open_hsm_from_env(); print(len(hsm.list_keys())); hsm.close()\n")
    base = {**os.environ, **softhsm_environment, "HDFPAY_HSM_BACKEND": "pkcs11"}
    for given_pin, succeeds in [(pin, True), ("9" * 16, False)]:
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                env={**base, pkcs11_backend.PIN_VARIABLE: given_pin})
        assert (result.returncode == 0) is succeeds, result.stderr
        assert given_pin not in result.stdout + result.stderr and pin not in result.stderr
        if not succeeds:
            assert "cannot log in" in result.stderr and "PinIncorrect" in result.stderr
