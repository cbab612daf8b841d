"""The agent's key custody: AES-DUKPT future-key registers sealed on disk (issue 4).

Checked against the host side (hsm.dukpt from the BDK, and the software HSM's own verification),
for forward secrecy (nothing stored derives a past key), and for kill -9 (no counter reused).
Most tests unlock the state with a raw key: scrypt costs ~0.1 s per derivation.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hsm import dukpt, key_blocks
from hsm.dukpt import KeyUsage
from hsm.interface import KeyUsage as BlockUsage
from hsm.software_backend import SoftwareHsm
from hsm_fixtures import KNOWN_BDK, KNOWN_INITIAL_KEY, KNOWN_INITIAL_KEY_ID
from hsm_fixtures import import_known, terminal_mac
from terminal_protocol.agent import future_keys
from terminal_protocol.agent.future_keys import FutureKeyTerminal, StateExists, registers_after
from terminal_protocol.agent.sealed_state import SealedStateError, SealedStateFile
from terminal_protocol.ksn_counter import MemoryCounter
from terminal_protocol.terminal_keys import ForgedResponse, TerminalKeys
from terminal_protocol.transport import TERMINAL_PATH, request_mac_input, response_mac_input

LOCAL_KEY = bytes(range(32))
PASSPHRASE = "correct horse battery staple"
BODY = b'{"v":1,"type":"purchase"}'
CHILD = """
import os, sys
from terminal_protocol.agent.future_keys import FutureKeyTerminal
from terminal_protocol.agent.sealed_state import SealedStateFile
keys = FutureKeyTerminal.open(SealedStateFile(sys.argv[1], key=bytes.fromhex(os.environ["KEY"])))
while True:
    print(keys.sign_request("POST", "/v1/terminal", b"{}")[0].hex(), flush=True)
"""


@pytest.fixture
def store(tmp_path: Path) -> SealedStateFile:
    return SealedStateFile(tmp_path / "keys.sealed", key=LOCAL_KEY)


def install(store: SealedStateFile, last_counter: int = 0) -> FutureKeyTerminal:
    return FutureKeyTerminal.install(store, KNOWN_INITIAL_KEY_ID, KNOWN_INITIAL_KEY,
                                     last_counter=last_counter)


def sign_and_check(keys: FutureKeyTerminal, expected_counter: int) -> None:
    """The host's MACs (from the BDK) for the request and the response."""
    ksn, mac = keys.sign_request("POST", TERMINAL_PATH, BODY)
    assert dukpt.split_ksn(ksn) == (KNOWN_INITIAL_KEY_ID, expected_counter)
    assert mac == host_request_mac(ksn)
    keys.check_response(ksn, 200, b"{}", host_answer_mac(ksn, 200, b"{}"))


def host_request_mac(ksn: bytes) -> bytes:
    return terminal_mac(ksn, request_mac_input("POST", TERMINAL_PATH, ksn, BODY),
                        KeyUsage.MAC_GENERATION)


def host_answer_mac(ksn: bytes, status: int, body: bytes) -> bytes:
    return terminal_mac(ksn, response_mac_input(ksn, status, body), KeyUsage.MAC_VERIFICATION)


def state(store: SealedStateFile) -> tuple[bytes, int, list]:
    return future_keys._decode(store.read(), store)


def test_macs_equal_the_hosts_for_the_first_counters(store):
    keys, counter = install(store), 0
    for step in range(1500):
        counter = dukpt.next_valid_counter(counter)
        sign_and_check(keys, counter)
        if step % 97 == 0:   # the incremental registers equal the closed form
            assert state(store)[2] == registers_after(KNOWN_INITIAL_KEY_ID, KNOWN_INITIAL_KEY,
                                                      counter)
    assert keys.last_counter == counter == 1500


@pytest.mark.parametrize("start, crossed", [
    (0xFFF0, 0x10000),          # 0xFFFF (16 bits) then the next bit
    (0x1FFF0, 0x20000),         # 0x1FFFE then a jump over 0x1FFFF (17 bits)
    (0x3FFFE0, 0x400000),       # from inside a region of 17 to 22 bits
    (0x0FFF7FF0, 0x0FFF8010),   # at 15 bits set, many short jumps in a row
])
def test_jumps_over_counters_with_more_than_16_bits(store, start, crossed):
    keys, counter, signed = install(store, start), start, set()
    while counter < crossed + 64:
        counter = dukpt.next_valid_counter(counter)
        sign_and_check(keys, counter)
        signed.add(counter)
        assert state(store)[2] == registers_after(KNOWN_INITIAL_KEY_ID, KNOWN_INITIAL_KEY,
                                                  counter)
    assert crossed in signed


def test_last_counters_then_exhaustion(store):
    keys = install(store, 0xFFFEFFF0)
    sign_and_check(keys, 0xFFFF0000)   # its derivation key is a published vector
    with pytest.raises(dukpt.CounterExhausted):
        keys.sign_request("POST", TERMINAL_PATH, BODY)
    assert keys.last_counter == state(store)[1] == 0xFFFF0000


def test_nothing_stored_derives_a_past_key(store):
    """After each transaction c, every register belongs to a counter above c, and no 16 bytes
    of the decrypted state equal the initial key or any key of a counter up to c."""
    keys, counter = install(store), 0
    past = {KNOWN_INITIAL_KEY}
    for _ in range(800):
        counter = dukpt.next_valid_counter(counter)
        keys.sign_request("POST", TERMINAL_PATH, BODY)
        ksn = dukpt.build_ksn(KNOWN_INITIAL_KEY_ID, counter)
        past.add(dukpt.derivation_key(KNOWN_INITIAL_KEY, ksn))
        past.update(dukpt.derive_working_key(KNOWN_INITIAL_KEY, ksn, usage)
                    for usage in (KeyUsage.MAC_GENERATION, KeyUsage.MAC_VERIFICATION))
        plaintext = store.read()
        assert not {plaintext[i:i + 16] for i in range(len(plaintext) - 15)} & past
        assert state(store)[1] == counter
        for register in filter(None, state(store)[2]):
            assert register[0] > counter
            ladder = dukpt.build_ksn(KNOWN_INITIAL_KEY_ID, register[0])
            assert register[1] == dukpt.derivation_key(KNOWN_INITIAL_KEY, ladder)
    file_bytes = store.path.read_bytes()
    stored = [key for _, key in filter(None, state(store)[2])] + [KNOWN_INITIAL_KEY]
    assert len(stored) > 1 and not any(key in file_bytes for key in stored)
    assert KNOWN_INITIAL_KEY_ID not in file_bytes


def test_kill_9_never_reuses_a_counter(store, tmp_path):
    install(store).close()
    environment = {**os.environ, "KEY": LOCAL_KEY.hex(),
                   "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    printed: list[int] = []
    for lines_before_kill in (5, 40, 150):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(store.path)],
                                 stdout=subprocess.PIPE, env=environment, text=True)
        for _ in range(lines_before_kill):
            printed.append(dukpt.split_ksn(bytes.fromhex(child.stdout.readline()))[1])
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate(timeout=10)
        assert child.returncode == -signal.SIGKILL
        printed += [dukpt.split_ksn(bytes.fromhex(line))[1] for line in rest.split()]
        (tmp_path / ".keys.sealed.killed").write_bytes(b"half")   # what a killed write leaves
        with FutureKeyTerminal.open(store) as keys:
            assert not list(tmp_path.glob(".keys.sealed.*"))
            printed.append(dukpt.split_ksn(keys.sign_request("POST", TERMINAL_PATH, BODY)[0])[1])
        assert printed[-1] > max(printed[:-1]) and len(set(printed)) == len(printed)


def test_passphrase_mode_and_wrong_secrets(tmp_path, store):
    path = tmp_path / "phrase.sealed"
    install(SealedStateFile(path, passphrase=PASSPHRASE)).close()
    with FutureKeyTerminal.open(SealedStateFile(path, passphrase=PASSPHRASE)) as keys:
        sign_and_check(keys, 1)
    for wrong in (SealedStateFile(path, passphrase=PASSPHRASE + "!"),
                  SealedStateFile(path, key=LOCAL_KEY)):
        with pytest.raises(SealedStateError) as error:
            FutureKeyTerminal.open(wrong)
        assert PASSPHRASE not in str(error.value)
    with pytest.raises(SealedStateError):
        install(SealedStateFile(tmp_path / "short.sealed", passphrase="short"))
    install(store).close()
    with pytest.raises(SealedStateError, match="wrong key"):
        FutureKeyTerminal.open(SealedStateFile(store.path, key=bytes(32)))


def test_any_flipped_byte_or_truncation_is_refused(store):
    install(store).close()
    original = store.path.read_bytes()
    flipped = [bytes(byte ^ (i == at) for i, byte in enumerate(original))
               for at in range(len(original))]
    for altered in flipped + [original[:length] for length in (0, 20, len(original) - 1)]:
        store.path.write_bytes(altered)
        with pytest.raises(SealedStateError):
            FutureKeyTerminal.open(store)
    store.path.write_bytes(original)
    FutureKeyTerminal.open(store).close()


def test_private_file_one_user_no_overwrite(store):
    keys = install(store)
    keys.sign_request("POST", TERMINAL_PATH, BODY)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    text = (repr(keys) + repr(store)).lower()
    assert LOCAL_KEY.hex() not in text and KNOWN_INITIAL_KEY.hex() not in text
    assert "last_counter=1" in text
    with pytest.raises(SealedStateError, match="in use"):
        FutureKeyTerminal.open(SealedStateFile(store.path, key=LOCAL_KEY))
    keys.close()
    with pytest.raises(StateExists):
        install(store)
    store.path.chmod(0o640)
    with pytest.raises(SealedStateError, match="chmod 600"):
        FutureKeyTerminal.open(store)
    rotated_id = bytes.fromhex("1234567890ABCDEF")
    rotated_key = dukpt.derive_initial_key(KNOWN_BDK, rotated_id)
    with FutureKeyTerminal.install(store, rotated_id, rotated_key, replace=True) as keys:
        ksn, mac = keys.sign_request("POST", TERMINAL_PATH, BODY)
    assert ksn == dukpt.build_ksn(rotated_id, 1) and mac == host_request_mac(ksn)


def test_software_hsm_verifies_requests_and_signs_answers(store, tmp_path, kek_file):
    hsm = SoftwareHsm(tmp_path / "keystore.json", kek_file=kek_file, create=True)
    import_known(hsm, "bdk", BlockUsage.BDK, KNOWN_BDK)
    keys = install(store)
    ksns, answers = [], []
    for _ in range(future_keys.OUTSTANDING_RESPONSE_KEYS + 1):
        ksn, mac = keys.sign_request("POST", TERMINAL_PATH, BODY)
        hsm.verify_dukpt_request_mac("bdk", ksn, request_mac_input("POST", TERMINAL_PATH, ksn,
                                                                    BODY), mac)
        ksns.append(ksn)
        answers.append(hsm.generate_dukpt_response_mac("bdk", ksn,
                                                       response_mac_input(ksn, 200, b"{}")))
    hsm.close()
    keys.check_response(ksns[-1], 200, b"{}", answers[-1])
    for ksn, body, mac in ((ksns[-1], b"{}", answers[-1]),      # each answer is checked once
                           (ksns[0], b"{}", answers[0]),        # the oldest of 17: key dropped
                           (ksns[1], b'{"x":1}', answers[1]),   # a forged body
                           (ksns[2], b"{}", None)):
        with pytest.raises(ForgedResponse):
            keys.check_response(ksn, 200, body, mac)


def test_same_output_as_terminal_keys_and_key_block_install(store):
    transport_key = bytes(range(16, 32))
    block = key_blocks.wrap(transport_key, BlockUsage.DUKPT_INITIAL_KEY, "X",
                            KNOWN_INITIAL_KEY, KNOWN_INITIAL_KEY_ID)
    keys = FutureKeyTerminal.install_from_key_block(store, block, transport_key)
    reference = TerminalKeys.from_key_block(block, transport_key, MemoryCounter())
    assert keys.initial_key_id == reference.initial_key_id == KNOWN_INITIAL_KEY_ID
    for body in (b"", BODY, b"x" * 5000):
        assert keys.sign_request("PUT", "/p", body) == reference.sign_request("PUT", "/p", body)


def test_threads_never_share_a_counter(store):
    keys = install(store)
    with ThreadPoolExecutor(max_workers=4) as pool:
        ksns = pool.map(lambda _: keys.sign_request("POST", TERMINAL_PATH, BODY)[0], range(200))
        counters = sorted(dukpt.split_ksn(ksn)[1] for ksn in ksns)
    assert counters == list(range(1, 201)) and state(store)[1] == 200


def test_installing_the_same_key_again_keeps_its_counter(tmp_path):
    """A repeated `terminal init --replace` (or a restore) must not reuse counters (63)."""
    store = SealedStateFile(tmp_path / "state", key=bytes(range(32)))
    with FutureKeyTerminal.install(store, KNOWN_INITIAL_KEY_ID, KNOWN_INITIAL_KEY) as keys:
        for _ in range(5):
            keys.sign_request("POST", "/v1/terminal", b"{}")
        used = keys.last_counter
    with FutureKeyTerminal.install(store, KNOWN_INITIAL_KEY_ID, KNOWN_INITIAL_KEY,
                                   replace=True) as again:
        ksn, _ = again.sign_request("POST", "/v1/terminal", b"{}")
    assert dukpt.split_ksn(ksn)[1] > used
