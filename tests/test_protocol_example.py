"""PROTOCOL.md's worked example, recomputed from its own text with the project's DUKPT and the
terminal's signing code: the spec and the code cannot drift apart."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

from hsm import dukpt, key_blocks
from hsm.key_check import kcv
from terminal_protocol.ksn_counter import MemoryCounter
from terminal_protocol.terminal_keys import TerminalKeys
from terminal_protocol.transport import TERMINAL_PATH

SPEC = (Path(__file__).parent.parent / "terminal_protocol" / "PROTOCOL.md").read_text()
EXAMPLE = SPEC[SPEC.index("## Worked example"):]


def _row(name: str) -> bytes:
    return bytes.fromhex(re.search(rf"\| {re.escape(name)}[^|]*\| `([0-9A-F]+)` \|", EXAMPLE).group(1))


def _bodies() -> list[bytes]:
    return [block.strip().encode() for block in re.findall(r"```\n(.*?)\n```", EXAMPLE, re.S)]


def _header_macs() -> list[bytes]:
    return [bytes.fromhex(m) for m in re.findall(r"\*\*`HDF-MAC: ([0-9A-F]{16})`\*\*", EXAMPLE)]


def test_the_worked_example_keys():
    bdk, key_id, initial_key = _row("BDK"), _row("initial key id"), _row("terminal's initial key")
    assert dukpt.derive_initial_key(bdk, key_id) == initial_key
    ksn = _row("KSN")
    assert ksn == key_id + _row("transaction counter")
    assert dukpt.derive_working_key(initial_key, ksn, dukpt.KeyUsage.MAC_GENERATION) == \
        _row("MAC generation key")
    assert dukpt.derive_working_key(initial_key, ksn, dukpt.KeyUsage.MAC_VERIFICATION) == \
        _row("MAC verification key")


def test_the_worked_example_macs():
    request, response = _bodies()
    request_mac, response_mac = _header_macs()
    assert f"{len(request)} bytes" in EXAMPLE
    keys = TerminalKeys(_row("initial key id"), _row("terminal's initial key"), MemoryCounter(0))
    ksn, mac = keys.sign_request("POST", TERMINAL_PATH, request)
    assert (ksn, mac) == (_row("KSN"), request_mac)
    keys.check_response(ksn, 200, response, response_mac)


RRN_FORMAT = re.compile(r"^(?P<year_digit>\d)(?P<day_of_year>\d{3})(?P<sequence>\d{8})$")


def test_every_rrn_of_the_spec_has_the_stated_format_and_the_examples_agree():
    """RRN = last digit of the year, day of the year (001-366) of the server's business date,
    then 8 digits of sequence; the examples are the first sale of the worked example's day."""
    assert "`Y` `DDD` `NNNNNNNN`" in SPEC
    rrns = set(re.findall(r'"rrn":"([^"]*)"', SPEC))
    local_time = dt.datetime.fromisoformat(re.search(r'"local_time":"([^"]+)"', EXAMPLE).group(1))
    assert rrns == {f"{local_time.year % 10}{local_time.timetuple().tm_yday:03d}00000001"}
    assert all(RRN_FORMAT.match(rrn) for rrn in rrns)


def _cell(name: str) -> str:
    """The value of the example row that starts with `name` (hex or a key block)."""
    return re.search(rf"\| {re.escape(name)}[^|]*\| `([0-9A-Z]+)` \|", EXAMPLE).group(1)


def test_the_dukpt_intermediate_values_of_the_spec():
    """What an implementer without X9.24-3 checks step by step: each derivation data block, the
    derivation key, and a counter with several bits set."""
    key_id, initial_key = _row("initial key id"), _row("terminal's initial key")
    usage = dukpt.KeyUsage
    assert dukpt.derivation_data(usage.INITIAL_KEY, key_id) == _row("derivation data, initial key")
    seed = dukpt.counter_seed(key_id, 1)
    assert dukpt.derivation_data(usage.KEY_DERIVATION, seed) == _row("derivation data, step")
    assert dukpt.derivation_data(usage.MAC_GENERATION, seed) == _row("derivation data, MAC generation")
    assert dukpt.derivation_data(usage.MAC_VERIFICATION, seed) == \
        _row("derivation data, MAC verification")
    ksn = _row("KSN")
    assert dukpt.derivation_key(initial_key, ksn) == _row("derivation key (end of the ladder)")
    # Counter 0000000B, by the spec's own recipe: one step per set bit, highest first.
    key = initial_key
    for name, working in [("for counter `0000000B`", 0x8), ("after *w* = `0000000A`", 0xA),
                          ("after *w* = `0000000B`", 0xB)]:
        key = dukpt.derive(key, usage.KEY_DERIVATION, dukpt.counter_seed(key_id, working))
        assert key == _row(name)
    assert dukpt.ladder(0xB) == [0x8, 0xA, 0xB]
    assert dukpt.derive_working_key(initial_key, key_id + bytes.fromhex("0000000B"),
                                    usage.MAC_GENERATION) == _row("its MAC generation key")


def _cmac(key: bytes, data: bytes) -> bytes:
    mac = CMAC(algorithms.AES(key))
    mac.update(data)
    return mac.finalize()


def test_the_key_block_of_the_spec_unwraps_by_its_recipe_and_by_the_terminal():
    """The TR-31 block read as the spec says (with nothing but AES and CMAC), and by the code a
    terminal runs; both give the worked example's initial key and initial key id."""
    transport_key = bytes.fromhex(re.search(r"transport key `([0-9A-F]{32})`", EXAMPLE).group(1))
    assert kcv(transport_key) == re.search(r"\(KCV\s+`([0-9A-F]{6})`\)", EXAMPLE).group(1)
    block = _cell("key block")
    keys_section = SPEC[SPEC.index("**Reading the key block.**"):SPEC.index("**Working keys")]
    shown = re.search(r"\n    (D0176\S+) ([0-9A-F]+)…([0-9A-F]+)\n", keys_section)
    assert block.startswith(shown.group(1) + shown.group(2)) and block.endswith(shown.group(3))
    assert (block[0], int(block[1:5]), block[5:7], block[7], block[8]) == ("D", len(block), "B1", "A", "X")
    assert block[16:20] == "IK14" and block[36:40] == "PB0C"
    header, encrypted, mac = block[:48], bytes.fromhex(block[48:-32]), bytes.fromhex(block[-32:])
    kbek = _cmac(transport_key, bytes.fromhex("0100000000020080"))
    kbak = _cmac(transport_key, bytes.fromhex("0100010000020080"))
    assert (kbek, kbak) == (_row("KBEK"), _row("KBAK"))
    decryptor = Cipher(algorithms.AES(kbek), modes.CBC(mac)).decryptor()
    clear = decryptor.update(encrypted) + decryptor.finalize()
    assert clear == _row("clear key data")
    assert _cmac(kbak, header.encode() + clear) == mac
    assert clear[:2] == (128).to_bytes(2, "big") and clear[2:18] == _row("terminal's initial key")
    unwrapped = key_blocks.unwrap(transport_key, block)
    assert (unwrapped.key, unwrapped.initial_key_id) == (
        _row("terminal's initial key"), bytes.fromhex(block[20:36]))
    assert unwrapped.initial_key_id == _row("initial key id")
