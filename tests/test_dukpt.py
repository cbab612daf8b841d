"""AES-DUKPT against published vectors, counter rules, and the host-side ladder cache.

Vectors: ANSI X9.24-3-2017 test-vector supplement, AES-128 BDK (the
derivation keys of counters 3 to 0xFFFF0000 as also listed by openemv/dukpt
test/dukpt_aes128_test.c), and the CMACs of moov-io/dukpt pkg/aes/aes_test.go (request under
the MAC generation key, response under the MAC verification key, over its ASCII test data).
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import algorithms

from hsm import dukpt
from hsm.dukpt import KeyUsage

BDK = bytes.fromhex("FEDCBA9876543210F1F1F1F1F1F1F1F1")
INITIAL_KEY_ID = bytes.fromhex("1234567890123456")
INITIAL_KEY = bytes.fromhex("1273671EA26AC29AFA4D1084127652A1")

WORKING_KEYS = [   # (counter, usage, key)
    (1, KeyUsage.PIN_ENCRYPTION, "AF8CB133A78F8DC2D1359F18527593FB"),
    (1, KeyUsage.MAC_GENERATION, "A2DC23DE6FDE0824A2BC321E08E4B8B7"),
    (1, KeyUsage.MAC_VERIFICATION, "DBB463945B286C07CD3AD82EE96FD9C9"),
    (1, KeyUsage.MAC_BOTH_WAYS, "85675439D18D7F1158BD8E3EAA3D502B"),
    (1, KeyUsage.DATA_ENCRYPT, "A35C412EFD41FDB98B69797C02DCD08F"),
    (2, KeyUsage.PIN_ENCRYPTION, "D30BDC73EC9714B000BEC66BDB7B6D09"),
    (2, KeyUsage.MAC_GENERATION, "484C3B06E8562704528CD5B46FB12FB6"),
    (8675309, KeyUsage.PIN_ENCRYPTION, "D1DDA386AA4A556AF0119FDCB5D132C6"),
]

DERIVATION_KEYS = [   # (counter, intermediate derivation key at the end of its ladder)
    (0x00000001, "4F21B565BAD9835E112B6465635EAE44"),
    (0x00000002, "2F34D68DE10F68D38091A73B9E7C437C"),
    (0x00000003, "031504E530365CF81264238540518318"),
    (0x00000004, "0EEFC7ADA628BA68878DA9165A8A1887"),
    (0x00000005, "C2A7AC328A5DA2D6002D62465BFC028B"),
    (0x00000006, "D30F7D9351DA58448A2F5E92B4EE3B7D"),
    (0x00000007, "A8253CEED9AC042C54F75D35C8352278"),
    (0x00000008, "718EE6CF0B27E53D5F7AF99C4D8146A2"),
    (0x0001FFFE, "E21E8C8D347F8561A2BE752DAA85A111"),
    (0x00020000, "F7AE9025468A25D37B7249CFFED224C8"),
    (0x00020001, "692C8EA4013645135B36497131DF9D2C"),   # 131073
    (0xFFFE2000, "48E585B694EB0B18D5C35443E163C0BA"),
    (0xFFFE4000, "396C2C7CA1EA701C03B86B7D41F0C562"),
    (0xFFFE8000, "0387625F189B58AE03EF0E8CCA41105E"),
    (0xFFFF0000, "F6BA59389BD14A9855BE9727E7C52E3C"),   # 4294901760
]

MOOV_MAC_DATA = b"4012345678909D987"
MOOV_CMACS = [   # (counter, request CMAC, response CMAC)
    (1, "A2EB5C1C35809E58404E873C3C411E31", "DD4E1895FD9BF53D8DAF25568ABF551D"),
    (2, "4D104704C53491A60944193DCAF6B411", "008CEAAE2B913BEEE76209EE9406DAC1"),
    (3, "6A18904AA8E966A03505F5EEBDAEBD82", "40CB2F0C2E043D060063FAA916A849E1"),
    (4, "77BBD3FB827158B9B12880B0794D1C74", "51FDE192BC484F769AA0A86F8BC5CB30"),
    (5, "C0CE6DA1F4434AD16EEEBF486C9616CD", "4B508F51104D184A9190061ED854200E"),
    (6, "05222AE91471C590B3A9471523324C14", "ED90BD8AE4571C75CF08EA3EA195ABF8"),
    (7, "37FA54258AAF805A44AA1273C0DF928C", "52D6C1D3A95B1D21761E20870D9A7E8C"),
    (8, "85C7CA68F55F51E7DCAC969B8C111130", "B45399DB90C0BA75DB4B86605758695A"),
]


def ksn(counter: int, initial_key_id: bytes = INITIAL_KEY_ID) -> bytes:
    return dukpt.build_ksn(initial_key_id, counter)


def aes_cmac(key: bytes, data: bytes) -> bytes:
    mac = cmac.CMAC(algorithms.AES(key))
    mac.update(data)
    return mac.finalize()


def test_initial_key_vector():
    assert dukpt.derive_initial_key(BDK, INITIAL_KEY_ID) == INITIAL_KEY


@pytest.mark.parametrize("counter, usage, expected", WORKING_KEYS)
def test_working_key_vectors(counter, usage, expected):
    assert dukpt.derive_working_key(INITIAL_KEY, ksn(counter), usage).hex().upper() == expected


@pytest.mark.parametrize("counter, expected", DERIVATION_KEYS)
def test_derivation_key_vectors(counter, expected):
    assert dukpt.derivation_key(INITIAL_KEY, ksn(counter)).hex().upper() == expected


@pytest.mark.parametrize("counter, request_mac, response_mac", MOOV_CMACS)
def test_request_and_response_cmac_vectors(counter, request_mac, response_mac):
    request_key = dukpt.derive_working_key(INITIAL_KEY, ksn(counter), KeyUsage.MAC_GENERATION)
    response_key = dukpt.derive_working_key(INITIAL_KEY, ksn(counter), KeyUsage.MAC_VERIFICATION)
    assert aes_cmac(request_key, MOOV_MAC_DATA).hex().upper() == request_mac
    assert aes_cmac(response_key, MOOV_MAC_DATA).hex().upper() == response_mac


def test_derivation_data_layout():
    data = dukpt.derivation_data(KeyUsage.MAC_GENERATION, bytes.fromhex("9012345600000001"))
    assert data.hex().upper() == "0101200000020080" + "9012345600000001"


def test_ladder_walks_set_bits_from_the_top():
    assert dukpt.ladder(0b1011) == [0b1000, 0b1010, 0b1011]
    assert dukpt.ladder(0x80000001) == [0x80000000, 0x80000001]


@pytest.mark.parametrize("counter, valid", [
    (0, False), (1, True), (0xFFFF, True), (0x1FFFF, False), (0xFFFF0000, True),
    (0xFFFF8000, False), (0x1_0000_0000, False),
])
def test_counter_validity(counter, valid):
    assert dukpt.is_valid_counter(counter) is valid


@pytest.mark.parametrize("counter, expected", [
    (0, 1), (1, 2), (0x1FFFE, 0x20000), (0x20000, 0x20001), (0xFFFE2000, 0xFFFE4000),
    (0xFFFE4000, 0xFFFE8000), (0xFFFE8000, 0xFFFF0000),
])
def test_next_valid_counter_follows_the_standard_sequence(counter, expected):
    assert dukpt.next_valid_counter(counter) == expected


@pytest.mark.parametrize("start, reaches_the_end", [
    (0x1FF00, False), (0x7FFF8000 - 300, False), (0xFFFC0000, True),
])
def test_next_valid_counter_is_the_smallest_valid_successor(start, reaches_the_end):
    counter = start
    for _ in range(300):
        brute_force = next((n for n in range(counter + 1, dukpt.MAX_COUNTER + 1)
                            if dukpt.is_valid_counter(n)), None)
        if brute_force is None:
            break
        counter = dukpt.next_valid_counter(counter)
        assert counter == brute_force
    if reaches_the_end:
        assert counter == 0xFFFF0000
        with pytest.raises(dukpt.CounterExhausted):
            dukpt.next_valid_counter(counter)
    else:
        assert brute_force is not None


def test_counter_exhausted_after_the_last_valid_counter():
    with pytest.raises(dukpt.CounterExhausted):
        dukpt.next_valid_counter(0xFFFF0000)


@pytest.mark.parametrize("bad_ksn", [
    INITIAL_KEY_ID + bytes(4),                          # counter 0
    INITIAL_KEY_ID + (0x1FFFF).to_bytes(4, "big"),      # 17 bits set
    INITIAL_KEY_ID + bytes(3),                          # 11 bytes
    INITIAL_KEY_ID + bytes([0, 0, 0, 1, 0]),            # 13 bytes
    "1234567890123456000001",                           # not bytes
])
def test_split_ksn_rejects_invalid_ksns(bad_ksn):
    with pytest.raises(dukpt.InvalidKsn):
        dukpt.split_ksn(bad_ksn)


def test_build_and_split_ksn_round_trip():
    built = dukpt.build_ksn(INITIAL_KEY_ID, 8675309)
    assert built == INITIAL_KEY_ID + (8675309).to_bytes(4, "big")
    assert dukpt.split_ksn(built) == (INITIAL_KEY_ID, 8675309)
    with pytest.raises(dukpt.InvalidKsn):
        dukpt.build_ksn(INITIAL_KEY_ID[:7], 1)


class CountingDerivations:
    """Plain bytes keys, counting derivations and discards to see what the cache saves."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.derived = 0
        self.discarded: list[bytes] = []
        self.fail_after = fail_after

    def initial_key(self, initial_key_id: bytes) -> bytes:
        self.derived += 1
        return dukpt.derive_initial_key(BDK, initial_key_id)

    def derive(self, key: bytes, usage: KeyUsage, seed: bytes) -> bytes:
        if self.fail_after is not None and self.derived >= self.fail_after:
            raise RuntimeError("token failure")
        self.derived += 1
        return dukpt.derive(key, usage, seed)

    def cache(self, max_entries: int = dukpt.DEFAULT_CACHE_TERMINALS) -> dukpt.DukptHostCache:
        return dukpt.DukptHostCache(self.initial_key, self.derive, self.discarded.append,
                                    max_entries)


OTHER_IDS = [bytes.fromhex("A1B2C3D4E5F60718"), bytes.fromhex("0000000100000002")]
COUNTER_WALK = (list(range(1, 200)) + [0xFFFF, 0x10000, 0x1FFFE, 0x20000, 0x20001, 8675309, 5,
                0xFFFE2000, 0xFFFE4000, 0xFFFE8000, 0xFFFF0000, 0x80000000, 3, 0x7FFF8000])


@pytest.mark.parametrize("max_entries", [dukpt.DEFAULT_CACHE_TERMINALS, 1])
def test_cache_gives_the_plain_derivation_for_interleaved_terminals(max_entries):
    cache = CountingDerivations().cache(max_entries)
    for counter in COUNTER_WALK:
        for initial_key_id in [INITIAL_KEY_ID] + OTHER_IDS:
            the_ksn = ksn(counter, initial_key_id)
            initial_key = dukpt.derive_initial_key(BDK, initial_key_id)
            assert cache.derivation_key(the_ksn) == dukpt.derivation_key(initial_key, the_ksn)
    assert len(cache) == min(max_entries, 3)


def test_cache_derives_one_key_per_next_counter():
    counting = CountingDerivations()
    cache = counting.cache()
    cache.derivation_key(ksn(1))
    assert counting.derived == 2                    # the initial key, then one ladder step
    counter = 1
    for _ in range(2000):
        counter = dukpt.next_valid_counter(counter)
        before = counting.derived
        cache.derivation_key(ksn(counter))
        assert counting.derived - before == 1, hex(counter)


def test_cache_evicts_least_recently_used_and_discards_its_keys():
    counting = CountingDerivations()
    cache = counting.cache(max_entries=2)
    cache.derivation_key(ksn(3, INITIAL_KEY_ID))          # initial key + 2 ladder steps
    cache.derivation_key(ksn(1, OTHER_IDS[0]))
    cache.derivation_key(ksn(2, OTHER_IDS[0]))            # replaces step 1 by step 2
    assert len(counting.discarded) == 1
    cache.derivation_key(ksn(1, OTHER_IDS[1]))            # evicts INITIAL_KEY_ID's 3 keys
    assert len(cache) == 2 and len(counting.discarded) == 4
    assert dukpt.derive_initial_key(BDK, INITIAL_KEY_ID) in counting.discarded
    cache.clear()
    assert len(cache) == 0 and len(counting.discarded) == counting.derived


def test_cache_discards_everything_of_an_entry_when_a_derivation_fails():
    counting = CountingDerivations()
    cache = counting.cache()
    cache.derivation_key(ksn(1))
    counting.fail_after = counting.derived + 2
    with pytest.raises(RuntimeError):
        cache.derivation_key(ksn(0b1110))                 # needs 3 new steps, the third fails
    assert len(cache) == 0 and len(counting.discarded) == counting.derived
    counting.fail_after = None
    assert cache.derivation_key(ksn(4)) == dukpt.derivation_key(INITIAL_KEY, ksn(4))
