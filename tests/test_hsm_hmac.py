"""The journal's seal key on both HSM backends (software keystore, PKCS#11 on SoftHSM2): an
HMAC-SHA-256 key made in the HSM, used only for HMACs, never imported or read out."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.exceptions import AttributeSensitive

from hsm.interface import (HMAC_SHA256_BYTES, KeyBlockError, KeyUsage, KeyUsageError, UnknownKey,
                           VerificationFailed)
from hsm.key_aliases import JOURNAL_SEAL_KEY_ALIAS
from hsm.key_check import KCV_INPUT, hmac_kcv
from hsm.software_backend import SoftwareHsm
from hsm_fixtures import KNOWN_BDK, KNOWN_MAC_KEY, import_known, wrap_known

DATA = b"hdfpay-journal-seal/1\ntransfers\n1\n1\n250\n"


def test_an_hmac_key_macs_and_verifies(backend):
    info = backend.generate_key(JOURNAL_SEAL_KEY_ALIAS, KeyUsage.HMAC)
    assert info.usage is KeyUsage.HMAC and len(info.kcv) == 6
    mac = backend.hmac_sha256(JOURNAL_SEAL_KEY_ALIAS, DATA)
    assert len(mac) == HMAC_SHA256_BYTES == 32
    assert backend.hmac_sha256(JOURNAL_SEAL_KEY_ALIAS, DATA) == mac
    assert backend.hmac_sha256(JOURNAL_SEAL_KEY_ALIAS, DATA + b"x") != mac
    # The check value is the key's HMAC of 16 zero bytes, whichever backend computes it.
    assert info.kcv == backend.hmac_sha256(JOURNAL_SEAL_KEY_ALIAS, KCV_INPUT)[:3].hex().upper()
    backend.verify_hmac_sha256(JOURNAL_SEAL_KEY_ALIAS, DATA, mac)
    tampered = bytes([mac[0] ^ 1]) + mac[1:]
    for data, bad in ((DATA, tampered), (DATA + b"x", mac), (DATA, mac[:16]), (DATA, b"")):
        with pytest.raises(VerificationFailed):
            backend.verify_hmac_sha256(JOURNAL_SEAL_KEY_ALIAS, data, bad)


def test_two_hmac_keys_differ(backend):
    backend.generate_key("journal/seal", KeyUsage.HMAC)
    backend.generate_key("journal/seal-2", KeyUsage.HMAC)
    assert backend.hmac_sha256("journal/seal", DATA) != backend.hmac_sha256("journal/seal-2", DATA)


def test_the_hmac_key_is_refused_outside_its_usage(backend):
    backend.generate_key(JOURNAL_SEAL_KEY_ALIAS, KeyUsage.HMAC)
    import_known(backend, "region/bdk", KeyUsage.BDK, KNOWN_BDK)
    import_known(backend, "ops/mac", KeyUsage.MAC, KNOWN_MAC_KEY)
    for other in ("region/bdk", "ops/mac", "ops/mac.kbpk"):
        with pytest.raises(KeyUsageError):
            backend.hmac_sha256(other, DATA)
    with pytest.raises(KeyUsageError):
        backend.generate_dukpt_response_mac(JOURNAL_SEAL_KEY_ALIAS, bytes(11) + b"\x01", DATA)
    with pytest.raises(UnknownKey):
        backend.hmac_sha256("journal/none", DATA)


def test_hmac_keys_never_travel(backend):
    """An HMAC key exists only where it was generated: a TR-31 block of usage M7 is refused."""
    _, kbpk = backend.create_transport_key("ceremony/kbpk")
    for algorithm in ("A", "H"):
        block = wrap_known(kbpk, "M7", bytes(range(16)), "C", algorithm=algorithm)
        with pytest.raises(KeyBlockError):
            backend.import_key_block("journal/seal", block, "ceremony/kbpk")
    assert [info.alias for info in backend.list_keys()] == ["ceremony/kbpk"]


def test_software_hmac_is_standard_and_kept_sealed(tmp_path, kek_file):
    keystore = tmp_path / "keys.json"
    software = SoftwareHsm(keystore, kek_file=kek_file, create=True)
    info = software.generate_key(JOURNAL_SEAL_KEY_ALIAS, KeyUsage.HMAC)
    value = software._keystore.unseal(software._keystore.get(JOURNAL_SEAL_KEY_ALIAS))
    assert len(value) == 32 and info.kcv == hmac_kcv(value)
    assert software.hmac_sha256(JOURNAL_SEAL_KEY_ALIAS, DATA) == hmac.new(value, DATA, hashlib.sha256).digest()
    assert value.hex() not in keystore.read_text().lower()
    reopened = SoftwareHsm(keystore, kek_file=kek_file)
    assert reopened.hmac_sha256(JOURNAL_SEAL_KEY_ALIAS, DATA) == software.hmac_sha256(JOURNAL_SEAL_KEY_ALIAS, DATA)


def test_the_token_key_is_a_non_extractable_generic_secret(pkcs11_hsm):
    try:
        pkcs11_hsm.generate_key(JOURNAL_SEAL_KEY_ALIAS, KeyUsage.HMAC)
        key = pkcs11_hsm._session.get_key(object_class=ObjectClass.SECRET_KEY,
                                          label=JOURNAL_SEAL_KEY_ALIAS)
        assert key[Attribute.KEY_TYPE] == KeyType.GENERIC_SECRET and key[Attribute.VALUE_LEN] == 32
        assert key[Attribute.SENSITIVE] and not key[Attribute.EXTRACTABLE]
        assert key[Attribute.SIGN] and not key[Attribute.COPYABLE]
        assert not (key[Attribute.DERIVE] or key[Attribute.ENCRYPT] or key[Attribute.WRAP])
        with pytest.raises(AttributeSensitive):
            key[Attribute.VALUE]
        assert pkcs11_hsm.key_info(JOURNAL_SEAL_KEY_ALIAS).usage is KeyUsage.HMAC
    finally:
        for info in pkcs11_hsm.list_keys():
            pkcs11_hsm.destroy_key(info.alias)
