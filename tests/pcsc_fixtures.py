"""pytest plugin: the real PC/SC stack (testbed.pcscd) as fixtures for the terminal agent's
tests. `pcscd` is the session's own pcscd with the vpcd driver (two readers, READER_0 and
READER_1); `virtual_card` gives virtual cards that connect to vpcd like a card entering the field.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest

from testbed.pcscd import (READER_0, READER_1, READERS, SYSTEMCTL_TIMEOUT_S, VPCD_DRIVER,  # noqa: F401
                           Pcscd, PcscdBusy, list_readers, lock_pcscd_for_this_session,
                           stop_foreign_pcscd, stop_systemd_pcscd, wait_reader_state)
from testbed.virtual_card import DEFAULT_UID, VirtualCard


@pytest.fixture(scope="session")
def pcscd(tmp_path_factory) -> Iterator[Pcscd]:
    for needed in ("pcscd", "setpriv"):
        if shutil.which(needed) is None:
            pytest.fail(f"{needed} not found: apt-get install pcscd vsmartcard-vpcd util-linux")
    if not VPCD_DRIVER.exists():
        pytest.fail(f"{VPCD_DRIVER} not found: apt-get install vsmartcard-vpcd")
    try:
        lock = lock_pcscd_for_this_session()
    except PcscdBusy as exc:
        pytest.fail(str(exc))
    systemd_units = stop_systemd_pcscd()
    stop_foreign_pcscd()
    daemon = Pcscd(tmp_path_factory.mktemp("pcscd"))
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
        if systemd_units:
            subprocess.run(["systemctl", "start", *systemd_units], check=False,
                           timeout=SYSTEMCTL_TIMEOUT_S)
        lock.close()


@pytest.fixture
def virtual_card(pcscd):
    """Factory: virtual_card(reader_index, uid) gives a card (not yet inserted) for READER_0
    or READER_1. At teardown every card is removed and the test waits until pcscd has seen the
    readers empty, so the next test starts from empty readers."""
    cards: list[VirtualCard] = []

    def make(reader_index: int = 0, uid: bytes = DEFAULT_UID) -> VirtualCard:
        card = VirtualCard(reader_index, uid)
        cards.append(card)
        return card

    yield make
    for card in cards:
        card.remove()
    listed = list_readers()
    for reader in {READERS[card.reader_index] for card in cards}:
        if isinstance(listed, list) and reader in listed:
            wait_reader_state(reader, present=False)
