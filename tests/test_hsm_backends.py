"""One suite, both HSM backends (software keystore and PKCS#11 on SoftHSM2): key life cycle,
usage enforcement, DUKPT MACs, TR-31 import and export. What only one backend has is in
test_software_keystore.py and test_pkcs11_token.py."""

from __future__ import annotations

import threading

import pytest
from psec import tr31

from hsm import dukpt, key_blocks
from hsm.interface import HsmError, KeyBlockError, KeyExists, KeyUsage, KeyUsageError, UnknownKey, VerificationFailed
from hsm.key_check import kcv
from hsm_fixtures import KNOWN_BDK, KNOWN_INITIAL_KEY, KNOWN_INITIAL_KEY_ID, KNOWN_MAC_KEY, aes_cmac, import_known, terminal_mac, wrap_known

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
