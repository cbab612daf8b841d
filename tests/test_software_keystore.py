"""The software HSM's keystore: encrypted at rest, tamper-evident, private, shared safely."""

from __future__ import annotations

import base64
import json
import stat

import pytest

from hsm import dukpt
from hsm.config import open_hsm_from_env
from hsm.interface import HsmError, KeyUsage
from hsm.key_check import kcv
from hsm.software_backend import SoftwareHsm
from hsm_fixtures import KNOWN_BDK, KNOWN_INITIAL_KEY_ID, KNOWN_MAC_KEY, import_known, terminal_mac

REQUEST = dukpt.KeyUsage.MAC_GENERATION
DATA = b'POST /v1/authorize {"amount_cents":450,"card":"04782E21801D80"}'


def ksn(counter: int, initial_key_id: bytes = KNOWN_INITIAL_KEY_ID) -> bytes:
    return dukpt.build_ksn(initial_key_id, counter)


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


def test_a_key_added_by_another_process_is_found_without_a_restart(tmp_path):
    """`hdfpay keys new-bdk` beside a running server: the server finds the new BDK."""
    path = tmp_path / "keys.json"
    server_side = SoftwareHsm(path, passphrase=PASSPHRASE, create=True)
    operator_side = SoftwareHsm(path, passphrase=PASSPHRASE)
    import_known(operator_side, "bdk/late", KeyUsage.BDK, KNOWN_BDK)
    assert server_side.key_info("bdk/late").kcv == kcv(KNOWN_BDK)
    mac = terminal_mac(ksn(1), DATA, REQUEST)
    server_side.verify_dukpt_request_mac("bdk/late", ksn(1), DATA, mac)
