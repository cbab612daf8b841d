"""One suite, both HSM backends (software keystore and PKCS#11 on SoftHSM2): key life cycle,
usage enforcement, DUKPT MACs, TR-31 import and export; then what only one backend has."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time

import pytest
from pkcs11 import Attribute, ObjectClass
from psec import tr31

from hsm import dukpt, key_blocks, pkcs11_backend
from hsm.config import open_hsm_from_env
from hsm.interface import (HsmError, KeyBlockError, KeyExists, KeyUsage, KeyUsageError,
                          UnknownKey, VerificationFailed)
from hsm.key_check import kcv
from hsm.software_backend import SoftwareHsm
from hsm_fixtures import (KNOWN_BDK, KNOWN_INITIAL_KEY, KNOWN_INITIAL_KEY_ID, KNOWN_MAC_KEY,
                          aes_cmac, import_known, terminal_mac, wrap_known)
from hsm_fixtures import backend, kek_file, pkcs11_hsm, softhsm_environment  # noqa: F401

REQUEST = dukpt.KeyUsage.MAC_GENERATION
RESPONSE = dukpt.KeyUsage.MAC_VERIFICATION
DATA = b'POST /v1/authorize {"amount_cents":450,"card":"04782E21801D80"}'


def ksn(counter: int, initial_key_id: bytes = KNOWN_INITIAL_KEY_ID) -> bytes:
    return dukpt.build_ksn(initial_key_id, counter)


@pytest.fixture
def bdk(backend) -> str:
    import_known(backend, "region/bdk", KeyUsage.BDK, KNOWN_BDK)
    return "region/bdk"


def test_generate_list_info_destroy(backend):
    bdk_info = backend.generate_key("region/bdk-2027", KeyUsage.BDK)
    mac_info = backend.generate_key("ops/mac", KeyUsage.MAC)
    assert (bdk_info.usage, mac_info.usage) == (KeyUsage.BDK, KeyUsage.MAC)
    assert len(bdk_info.kcv) == 6 and bdk_info.kcv == bdk_info.kcv.upper() != mac_info.kcv
    assert backend.key_info("ops/mac") == mac_info
    assert backend.list_keys() == [mac_info, bdk_info]
    with pytest.raises(KeyExists):
        backend.generate_key("ops/mac", KeyUsage.MAC)
    backend.destroy_key("ops/mac")
    assert backend.list_keys() == [bdk_info]
    with pytest.raises(UnknownKey):
        backend.key_info("ops/mac")
    with pytest.raises(UnknownKey):
        backend.destroy_key("ops/mac")
    assert backend.generate_key("ops/mac", KeyUsage.MAC).alias == "ops/mac"
    with pytest.raises(HsmError, match="invalid key alias"):
        backend.generate_key("Bad Alias", KeyUsage.MAC)


@pytest.mark.parametrize("usage", [KeyUsage.KEY_BLOCK_PROTECTION, KeyUsage.DUKPT_INITIAL_KEY])
def test_usages_that_cannot_be_random_are_not_generated(backend, usage):
    with pytest.raises(KeyUsageError):
        backend.generate_key("k", usage)
    assert backend.list_keys() == []


def test_kcv_of_known_keys(backend):
    transport, value = backend.create_transport_key("term/1/kbpk")
    assert transport.kcv == kcv(value) and transport.usage is KeyUsage.KEY_BLOCK_PROTECTION
    mac = import_known(backend, "ops/mac", KeyUsage.MAC, KNOWN_MAC_KEY)
    assert mac.kcv == kcv(KNOWN_MAC_KEY) == aes_cmac(KNOWN_MAC_KEY, bytes(16))[:3].hex().upper()
    assert import_known(backend, "region/bdk", KeyUsage.BDK, KNOWN_BDK).kcv == kcv(KNOWN_BDK)
    assert backend.key_info("region/bdk").kcv == kcv(KNOWN_BDK)


def test_each_key_is_refused_outside_its_usage(backend, bdk):
    import_known(backend, "ops/mac", KeyUsage.MAC, KNOWN_MAC_KEY)
    backend.create_transport_key("term/1/kbpk")
    good_mac = terminal_mac(ksn(1), DATA, REQUEST)
    mac_block = wrap_known(KNOWN_MAC_KEY, "M6", KNOWN_MAC_KEY, "C")
    for wrong in ["ops/mac", "term/1/kbpk"]:
        with pytest.raises(KeyUsageError):
            backend.verify_dukpt_request_mac(wrong, ksn(1), DATA, good_mac)
        with pytest.raises(KeyUsageError):
            backend.generate_dukpt_response_mac(wrong, ksn(1), DATA)
        with pytest.raises(KeyUsageError):
            backend.export_dukpt_initial_key(wrong, KNOWN_INITIAL_KEY_ID, "term/1/kbpk")
    for wrong in ["ops/mac", bdk]:
        with pytest.raises(KeyUsageError):
            backend.export_dukpt_initial_key(bdk, KNOWN_INITIAL_KEY_ID, wrong)
        with pytest.raises(KeyUsageError):
            backend.import_key_block("x", mac_block, wrong)
    with pytest.raises(UnknownKey):
        backend.verify_dukpt_request_mac("nope", ksn(1), DATA, good_mac)
    backend.verify_dukpt_request_mac(bdk, ksn(1), DATA, good_mac)


def test_kbpk_mode_of_use_is_enforced(backend, bdk):
    _, outer = backend.create_transport_key("ceremony/kbpk")
    wrap_only, unwrap_only = b"\x01" * 16, b"\x02" * 16
    backend.import_key_block("wrap-only", wrap_known(outer, "K1", wrap_only, "E"),
                             "ceremony/kbpk")
    backend.import_key_block("unwrap-only", wrap_known(outer, "K1", unwrap_only, "D"),
                             "ceremony/kbpk")
    assert backend.export_dukpt_initial_key(bdk, KNOWN_INITIAL_KEY_ID, "wrap-only")
    with pytest.raises(KeyUsageError):
        backend.import_key_block("m", wrap_known(wrap_only, "M6", KNOWN_MAC_KEY, "C"),
                                 "wrap-only")
    with pytest.raises(KeyUsageError):
        backend.export_dukpt_initial_key(bdk, KNOWN_INITIAL_KEY_ID, "unwrap-only")
    backend.import_key_block("m", wrap_known(unwrap_only, "M6", KNOWN_MAC_KEY, "V"),
                             "unwrap-only")
    assert backend.key_info("m").kcv == kcv(KNOWN_MAC_KEY)


def test_request_mac_verifies_and_any_change_fails(backend, bdk):
    counter = 0
    for _ in range(40):
        counter = dukpt.next_valid_counter(counter)
        backend.verify_dukpt_request_mac(bdk, ksn(counter), DATA,
                                     terminal_mac(ksn(counter), DATA, REQUEST))
    good = terminal_mac(ksn(counter), DATA, REQUEST)
    tampered = bytearray(DATA)
    tampered[10] ^= 0x01
    other_terminal = ksn(counter, bytes.fromhex("A1B2C3D4E5F60718"))
    failures = [
        (ksn(counter), bytes(tampered), good),
        (ksn(dukpt.next_valid_counter(counter)), DATA, good),
        (other_terminal, DATA, good),
        (ksn(counter), DATA, good[:7]),
        (ksn(counter), DATA, good + b"\x00"),
        (ksn(counter), DATA, terminal_mac(ksn(counter), DATA, RESPONSE)),
        (ksn(counter), DATA, terminal_mac(ksn(counter), DATA, REQUEST, bdk=KNOWN_MAC_KEY)),
        (KNOWN_INITIAL_KEY_ID + bytes(4), DATA, good),
        (KNOWN_INITIAL_KEY_ID + (0x1FFFF).to_bytes(4, "big"), DATA, good),
        (ksn(counter)[:11], DATA, good),
    ]
    for bad_ksn, data, mac in failures:
        with pytest.raises(VerificationFailed):
            backend.verify_dukpt_request_mac(bdk, bad_ksn, data, mac)
    backend.verify_dukpt_request_mac(bdk, ksn(counter), DATA, good)


@pytest.mark.parametrize("counter", [1, 2, 3, 0x20001, 8675309, 0xFFFF0000])
def test_response_mac_matches_the_terminals_computation(backend, bdk, counter):
    response = backend.generate_dukpt_response_mac(bdk, ksn(counter), DATA)
    assert response == terminal_mac(ksn(counter), DATA, RESPONSE)
    assert response != terminal_mac(ksn(counter), DATA, REQUEST)


def test_published_cmacs_through_the_backend(backend, bdk):
    """moov-io/dukpt's counter 1 CMACs over its ASCII test data (see test_dukpt.py)."""
    data = b"4012345678909D987"
    backend.verify_dukpt_request_mac(bdk, ksn(1), data, bytes.fromhex("A2EB5C1C35809E58"))
    response = backend.generate_dukpt_response_mac(bdk, ksn(1), data)
    assert response.hex().upper() == "DD4E1895FD9BF53D"
    with pytest.raises(HsmError):
        backend.generate_dukpt_response_mac(bdk, KNOWN_INITIAL_KEY_ID + bytes(4), data)


def test_exported_initial_key_unwraps_to_the_derived_key(backend, bdk):
    _, kbpk = backend.create_transport_key("term/1/kbpk")
    block = backend.export_dukpt_initial_key(bdk, KNOWN_INITIAL_KEY_ID, "term/1/kbpk")
    header, key = tr31.unwrap(kbpk, block)
    assert key == KNOWN_INITIAL_KEY == dukpt.derive_initial_key(KNOWN_BDK, KNOWN_INITIAL_KEY_ID)
    assert (header.version_id, header.key_usage, header.algorithm, header.mode_of_use,
            header.exportability) == ("D", "B1", "A", "X", "N")
    assert header.blocks["IK"] == KNOWN_INITIAL_KEY_ID.hex().upper()
    other_id = bytes.fromhex("00000000DEADBEEF")
    _, other = tr31.unwrap(kbpk, backend.export_dukpt_initial_key(bdk, other_id, "term/1/kbpk"))
    assert other == dukpt.derive_initial_key(KNOWN_BDK, other_id) != key
    imported = backend.import_key_block("term/1/ik", block, "term/1/kbpk")
    assert (imported.usage, imported.kcv) == (KeyUsage.DUKPT_INITIAL_KEY, kcv(KNOWN_INITIAL_KEY))
    assert KNOWN_INITIAL_KEY.hex() not in block.lower()
    with pytest.raises(HsmError):
        backend.export_dukpt_initial_key(bdk, KNOWN_INITIAL_KEY_ID[:7], "term/1/kbpk")


def test_tampered_or_foreign_blocks_are_refused(backend):
    _, kbpk = backend.create_transport_key("term/1/kbpk")
    block = wrap_known(kbpk, "M6", KNOWN_MAC_KEY, "C")
    header_length = 16
    flips = [header_length + 3, len(block) - 1, 5]     # ciphertext, block MAC, header (usage)
    for position in flips:
        swapped = "0" if block[position] != "0" else "1"
        tampered = block[:position] + swapped + block[position + 1:]
        with pytest.raises(KeyBlockError):
            backend.import_key_block("m", tampered, "term/1/kbpk")
    foreign = wrap_known(b"\x07" * 16, "M6", KNOWN_MAC_KEY, "C")
    with pytest.raises(KeyBlockError):
        backend.import_key_block("m", foreign, "term/1/kbpk")
    for garbage in ["", "D0016M6AC00N0000", "not a key block", "Ä" * 48]:
        with pytest.raises(KeyBlockError):
            backend.import_key_block("m", garbage, "term/1/kbpk")
    assert [info.alias for info in backend.list_keys()] == ["term/1/kbpk"]


@pytest.mark.parametrize("usage, mode, value, algorithm", [
    ("M6", "E", KNOWN_MAC_KEY, "A"), ("B0", "C", KNOWN_BDK, "A"), ("K1", "X", KNOWN_BDK, "A"),
    ("M6", "X", KNOWN_MAC_KEY, "A"), ("P0", "E", KNOWN_BDK, "A"), ("M6", "C", KNOWN_MAC_KEY, "T"),
    ("M6", "C", KNOWN_MAC_KEY * 2, "A"),
])
def test_header_that_does_not_fit_is_refused(backend, usage, mode, value, algorithm):
    _, kbpk = backend.create_transport_key("term/1/kbpk")
    block = wrap_known(kbpk, usage, value, mode, algorithm)
    with pytest.raises(KeyBlockError):
        backend.import_key_block("k", block, "term/1/kbpk")
    with pytest.raises(UnknownKey):
        backend.key_info("k")


def test_no_key_material_in_reprs_and_errors(backend, bdk):
    info, kbpk = backend.create_transport_key("term/1/kbpk")
    secrets_hex = [KNOWN_BDK.hex(), kbpk.hex(), KNOWN_INITIAL_KEY.hex()]
    texts = [repr(backend), str(info), repr(info),
             repr(key_blocks.unwrap(kbpk, wrap_known(kbpk, "B0", KNOWN_BDK, "X")))]
    failing = [
        lambda: backend.import_key_block("k", wrap_known(b"\x01" * 16, "B0", KNOWN_BDK, "X"),
                                         "term/1/kbpk"),
        lambda: backend.import_key_block("k", wrap_known(kbpk, "B0", KNOWN_BDK, "C"),
                                         "term/1/kbpk"),
        lambda: backend.verify_dukpt_request_mac(bdk, ksn(5), DATA, bytes(8)),
        lambda: backend.export_dukpt_initial_key("term/1/kbpk", KNOWN_INITIAL_KEY_ID, bdk),
    ]
    for call in failing:
        with pytest.raises(HsmError) as raised:
            call()
        texts.append(str(raised.value))
    for text in texts:
        for secret in secrets_hex:
            assert secret not in text.lower(), text


def test_concurrent_verifications_give_correct_results(backend, bdk):
    errors: list[str] = []

    def terminal(number: int) -> None:
        initial_key_id = bytes([0x10 + number]) * 8
        counter = 0
        try:
            for step in range(60):
                counter = dukpt.next_valid_counter(counter)
                the_ksn = ksn(counter, initial_key_id)
                mac = terminal_mac(the_ksn, DATA, REQUEST)
                if step % 7 == 3:
                    with pytest.raises(VerificationFailed):
                        backend.verify_dukpt_request_mac(bdk, the_ksn, DATA, bytes(8))
                backend.verify_dukpt_request_mac(bdk, the_ksn, DATA, mac)
                response = backend.generate_dukpt_response_mac(bdk, the_ksn, DATA)
                assert response == terminal_mac(the_ksn, DATA, RESPONSE)
        except BaseException as error:       # collected: a thread's failure must fail the test
            errors.append(f"terminal {number}: {error!r}")

    threads = [threading.Thread(target=terminal, args=(number,)) for number in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# --- The software HSM's keystore -------------------------------------------------------------

PASSPHRASE = "correct horse battery staple"


def test_keystore_holds_no_key_in_clear(tmp_path, kek_file):
    path = tmp_path / "keys.json"
    software = SoftwareHsm(path, kek_file=kek_file, create=True)
    import_known(software, "region/bdk", KeyUsage.BDK, KNOWN_BDK)
    import_known(software, "ops/mac", KeyUsage.MAC, KNOWN_MAC_KEY)
    _, transport = software.create_transport_key("term/1/kbpk")
    raw = path.read_bytes()
    for key in (KNOWN_BDK, KNOWN_MAC_KEY, transport):
        for form in (key, key.hex().encode(), key.hex().upper().encode(), base64.b64encode(key)):
            assert form not in raw
    assert json.loads(raw)["keys"]["region/bdk"]["kcv"] == kcv(KNOWN_BDK)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_keystore_survives_reopen_and_only_its_passphrase_opens_it(tmp_path, kek_file):
    path = tmp_path / "keys.json"
    software = SoftwareHsm(path, passphrase=PASSPHRASE, create=True)
    import_known(software, "region/bdk", KeyUsage.BDK, KNOWN_BDK)
    reopened = SoftwareHsm(path, passphrase=PASSPHRASE)
    assert reopened.list_keys() == software.list_keys() and len(reopened.list_keys()) == 2
    reopened.verify_dukpt_request_mac("region/bdk", ksn(9), DATA,
                                      terminal_mac(ksn(9), DATA, REQUEST))
    refusals = [
        (lambda: SoftwareHsm(path, passphrase=PASSPHRASE + "!"), "wrong passphrase"),
        (lambda: SoftwareHsm(path, kek_file=kek_file), "by a passphrase"),
        (lambda: SoftwareHsm(path, passphrase=PASSPHRASE, create=True), "already exists"),
        (lambda: SoftwareHsm(tmp_path / "new.json", passphrase="short", create=True), "at least"),
        (lambda: SoftwareHsm(tmp_path / "none.json", passphrase=PASSPHRASE), "does not exist"),
        (lambda: SoftwareHsm(path), "one of them"),
    ]
    for open_it, message in refusals:
        with pytest.raises(HsmError, match=message):
            open_it()


def test_keystore_edits_are_detected(tmp_path, kek_file):
    path = tmp_path / "keys.json"
    software = SoftwareHsm(path, kek_file=kek_file, create=True)
    import_known(software, "ops/mac", KeyUsage.MAC, KNOWN_MAC_KEY)
    original = json.loads(path.read_text())
    edits = [lambda keys: keys["ops/mac"].update(usage="B0"),
             lambda keys: keys["ops/mac"].update(kcv="000000"),
             lambda keys: keys.update({"ops/other": keys.pop("ops/mac")})]
    for edit in edits:
        document = json.loads(json.dumps(original))
        edit(document["keys"])
        path.write_text(json.dumps(document))
        with pytest.raises(HsmError, match="fails authentication"):
            SoftwareHsm(path, kek_file=kek_file)


def test_keystore_and_kek_readable_by_others_are_refused(tmp_path, kek_file):
    path = tmp_path / "keys.json"
    SoftwareHsm(path, kek_file=kek_file, create=True)
    for exposed in (path, kek_file):
        exposed.chmod(0o644)
        with pytest.raises(HsmError, match="chmod 600"):
            SoftwareHsm(path, kek_file=kek_file)
        exposed.chmod(0o600)
    assert SoftwareHsm(path, kek_file=kek_file).list_keys() == []


def test_two_writers_lose_no_update(tmp_path, kek_file):
    path = tmp_path / "keys.json"
    first = SoftwareHsm(path, kek_file=kek_file, create=True)
    second = SoftwareHsm(path, kek_file=kek_file)
    first.generate_key("a", KeyUsage.MAC)
    second.generate_key("b", KeyUsage.MAC)
    first.destroy_key("a")
    assert [info.alias for info in SoftwareHsm(path, kek_file=kek_file).list_keys()] == ["b"]


def test_open_from_environment(tmp_path, kek_file):
    path = str(tmp_path / "keys.json")
    environment = {"HDFPAY_KEYSTORE": path, "HDFPAY_KEYSTORE_KEK_FILE": str(kek_file)}
    created = open_hsm_from_env(environment, create=True)
    created.generate_key("ops/mac", KeyUsage.MAC)
    reopened = open_hsm_from_env({**environment, "HDFPAY_HSM_BACKEND": "software"})
    assert isinstance(reopened, SoftwareHsm) and reopened.list_keys() == created.list_keys()
    refusals = [
        ({}, "HDFPAY_KEYSTORE is not set"),
        ({"HDFPAY_KEYSTORE": path}, "HDFPAY_KEYSTORE_PASSPHRASE and HDFPAY_KEYSTORE_KEK_FILE"),
        ({**environment, "HDFPAY_KEYSTORE_PASSPHRASE": PASSPHRASE}, "exactly one"),
        ({"HDFPAY_HSM_BACKEND": "thales"}, "HDFPAY_HSM_BACKEND"),
        ({"HDFPAY_HSM_BACKEND": "pkcs11", "HDFPAY_PKCS11_MODULE": "/x.so",
          "HDFPAY_PKCS11_TOKEN_LABEL": "t"}, "HDFPAY_PKCS11_PIN is not set"),
    ]
    for variables, message in refusals:
        with pytest.raises(HsmError, match=message):
            open_hsm_from_env(variables)


# --- The PKCS#11 token -----------------------------------------------------------------------

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
