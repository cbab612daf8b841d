"""PROTOCOL.md's worked example, recomputed from its own text with the project's DUKPT and the
terminal's signing code: the spec and the code cannot drift apart."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from hsm import dukpt
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
