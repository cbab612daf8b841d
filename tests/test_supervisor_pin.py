"""The supervisor's PIN on its own: sealed as a hash, wrong PINs counted on disk, the lockout's
end. The agent's use of it (refund, late void, close) is tested on pcscd in test_terminal_agent."""

from __future__ import annotations

import os

import pytest

from terminal_protocol.agent.local_store import LocalStore
from terminal_protocol.agent.sealed_state import SealedStateError, SealedStateFile
from terminal_protocol.agent.supervisor_pin import (
    SUPERVISOR_PIN_ATTEMPTS_MAX, SUPERVISOR_PIN_LOCKOUT_S, PinFormatError, SupervisorPin,
    check_pin_format, write_pin,
)

KEY = os.urandom(32)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pin_and_store(tmp_path):
    sealed = SealedStateFile(tmp_path / "supervisor-pin.sealed", key=KEY)
    write_pin(sealed, "482190")
    store = LocalStore(tmp_path / "journal.sqlite")
    yield sealed, store
    store.close()


def test_the_pin_is_sealed_and_hashed(pin_and_store):
    sealed, _ = pin_and_store
    on_disk = sealed.path.read_bytes()
    assert b"482190" not in on_disk and b"HDFPIN1" not in on_disk     # sealed: not even the format
    with pytest.raises(PinFormatError, match="4 à 8 chiffres"):
        check_pin_format("12a4")
    with pytest.raises(PinFormatError):
        check_pin_format("123456789")


def test_wrong_pins_lock_it_until_the_lockout_ends_even_across_a_restart(pin_and_store):
    sealed, store = pin_and_store
    clock = Clock()
    pin = SupervisorPin.load(sealed, store, clock=clock)
    assert pin.check("482190").ok
    checks = [pin.check("000000") for _ in range(SUPERVISOR_PIN_ATTEMPTS_MAX)]
    assert [c.reason for c in checks] == ["wrong"] * (SUPERVISOR_PIN_ATTEMPTS_MAX - 1) + ["locked"]
    assert checks[0].attempts_left == SUPERVISOR_PIN_ATTEMPTS_MAX - 1
    restarted = SupervisorPin.load(sealed, store, clock=clock)          # counted on disk
    clock.now += SUPERVISOR_PIN_LOCKOUT_S - 1
    assert restarted.check("482190").reason == "locked"                 # the right PIN too
    clock.now += 2
    assert restarted.check("482190").ok
    assert restarted.check("000000").attempts_left == SUPERVISOR_PIN_ATTEMPTS_MAX - 1   # reset


def test_another_key_cannot_read_the_pin(pin_and_store, tmp_path):
    sealed, store = pin_and_store
    with pytest.raises(SealedStateError, match="wrong key"):
        SupervisorPin.load(SealedStateFile(sealed.path, key=os.urandom(32)), store)
