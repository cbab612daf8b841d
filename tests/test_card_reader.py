"""The terminal agent's PC/SC reader on the real stack: pyscard -> pcscd -> vpcd -> a virtual card
(tests/virtual_card.py). Waits are on reader state or on threads, each bounded; nothing sleeps."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from concurrent.futures import Future

import pytest
from smartcard import scard

from pcsc_fixtures import READER_0, READER_1, wait_reader_state
from terminal_protocol.agent.card_reader import (
    Cancelled, CardReader, CardRemoved, CardUnreadable, NoReader, ServiceUnavailable, TapTimeout)

UID_4 = bytes.fromhex("04A1B2C3")
UID_7 = bytes.fromhex("04112233445566")
UID_10 = bytes.fromhex("04112233445566778899")
TAP_TIMEOUT_MS = 2000
SHORT_TIMEOUT_MS = 300
THREAD_JOIN_TIMEOUT_S = 10.0
# A deadline or a cancel is honoured within one status poll (250 ms); allow scheduling slack.
PROMPT_S = 1.0
REPEATED_READS = 20


@pytest.fixture
def reader():
    readers: list[CardReader] = []

    def make(name: str | None = READER_0) -> CardReader:
        readers.append(CardReader(name))
        return readers[-1]

    yield make
    for each in readers:
        each.close()


@pytest.fixture
def in_thread(reader):
    """Runs a blocking wait in a thread, as the agent does with asyncio.to_thread. At teardown
    (before the readers close) every wait is cancelled and joined, so none outlives its test."""
    cancels: list[threading.Event] = []
    threads: list[threading.Thread] = []

    def run(wait, timeout_ms: int, cancel: threading.Event | None = None) -> Future:
        cancel = cancel if cancel is not None else threading.Event()
        cancels.append(cancel)
        future: Future = Future()

        def body():
            try:
                future.set_result(wait(timeout_ms, cancel))
            except BaseException as error:  # handed to the test through the future
                future.set_exception(error)

        threads.append(threading.Thread(target=body, daemon=True))
        threads[-1].start()
        return future

    yield run
    for cancel in cancels:
        cancel.set()
    for thread in threads:
        thread.join(THREAD_JOIN_TIMEOUT_S)
        assert not thread.is_alive(), "a reader wait ignored its cancel"


@pytest.mark.parametrize("uid", [UID_4, UID_7, UID_10], ids=["4-byte", "7-byte", "10-byte"])
def test_reads_the_uid_of_a_tapped_card(pcscd, virtual_card, reader, in_thread, uid):
    card_reader = reader()
    pending = in_thread(card_reader.wait_for_uid, TAP_TIMEOUT_MS)
    card = virtual_card(0, uid)
    card.insert()
    assert pending.result(THREAD_JOIN_TIMEOUT_S) == uid
    assert card.get_uid_answered == 1


def test_a_card_already_on_the_reader_counts(pcscd, virtual_card, reader):
    card = virtual_card(0, UID_7)
    card.insert()
    wait_reader_state(READER_0, present=True)
    assert reader().wait_for_uid(SHORT_TIMEOUT_MS) == UID_7
    # a new insertion brings a new UID
    card.remove()
    wait_reader_state(READER_0, present=False)
    card.insert(UID_4)
    assert reader().wait_for_uid(TAP_TIMEOUT_MS) == UID_4


def test_the_named_reader_is_used_and_the_other_ignored(pcscd, virtual_card, reader):
    card_0, card_1 = virtual_card(0, UID_4), virtual_card(1, UID_7)
    card_0.insert()
    wait_reader_state(READER_0, present=True)
    with pytest.raises(TapTimeout) as caught:
        reader(READER_1).wait_for_uid(SHORT_TIMEOUT_MS)
    assert caught.value.message_fr == "Aucune carte présentée"
    card_1.insert()
    assert reader(READER_1).wait_for_uid(TAP_TIMEOUT_MS) == UID_7
    assert reader(READER_0).wait_for_uid(SHORT_TIMEOUT_MS) == UID_4
    assert reader(None).wait_for_uid(SHORT_TIMEOUT_MS) == UID_4  # None: first reader listed
    assert (card_0.get_uid_answered, card_1.get_uid_answered) == (2, 1)


def test_an_absent_reader_is_reported_at_once_with_the_readers_seen(pcscd, reader):
    absent = reader("ACS ACR122U 00 00")
    started = time.monotonic()
    with pytest.raises(NoReader) as caught:
        absent.wait_for_uid(TAP_TIMEOUT_MS)
    assert time.monotonic() - started < PROMPT_S
    assert type(caught.value) is NoReader
    assert "ACS ACR122U 00 00" in str(caught.value)
    assert READER_0 in str(caught.value) and READER_1 in str(caught.value)
    assert caught.value.message_fr.startswith("Lecteur de cartes introuvable")
    assert absent.readers() == [READER_0, READER_1]


def test_no_card_times_out_within_a_bounded_time(pcscd, reader):
    started = time.monotonic()
    with pytest.raises(TapTimeout):
        reader().wait_for_uid(SHORT_TIMEOUT_MS)
    elapsed_s = time.monotonic() - started
    assert SHORT_TIMEOUT_MS / 1000 <= elapsed_s < SHORT_TIMEOUT_MS / 1000 + PROMPT_S


def test_a_card_leaving_during_get_uid_is_card_removed(pcscd, virtual_card, reader):
    """What pcscd really reports: vpcd turns the closed card socket into a successful
    SCardTransmit with an empty response (a second transmit would give SCARD_E_NOT_TRANSACTED)."""
    card = virtual_card(0, UID_4)
    card.vanish_on_get_uid = True
    card.insert()
    with pytest.raises(CardRemoved) as caught:
        reader().wait_for_uid(TAP_TIMEOUT_MS)
    assert card.vanished.is_set() and card.get_uid_answered == 0
    assert caught.value.message_fr == "Carte retirée trop tôt : présentez-la à nouveau"


@pytest.mark.parametrize("reply", [bytes.fromhex("6A81"), UID_4 + b"\x01" + bytes.fromhex("9000"),
                                   b"\x90"], ids=["error-status", "5-byte-uid", "no-status-word"])
def test_a_bad_answer_to_get_uid_is_card_unreadable(pcscd, virtual_card, reader, reply):
    card = virtual_card(0)
    card.get_uid_reply = reply
    card.insert()
    with pytest.raises(CardUnreadable) as caught:
        reader().wait_for_uid(TAP_TIMEOUT_MS)
    assert card.get_uid_answered == 1
    assert caught.value.message_fr.startswith("Carte illisible")


def test_wait_for_removal(pcscd, virtual_card, reader, in_thread):
    card_reader = reader()
    assert card_reader.wait_for_removal(SHORT_TIMEOUT_MS) is True  # nothing on the reader
    card = virtual_card(0)
    card.insert()
    assert card_reader.wait_for_uid(TAP_TIMEOUT_MS) == card.uid
    assert card_reader.wait_for_removal(SHORT_TIMEOUT_MS) is False  # still there
    pending = in_thread(card_reader.wait_for_removal, TAP_TIMEOUT_MS)
    card.remove()
    assert pending.result(THREAD_JOIN_TIMEOUT_S) is True


@pytest.mark.parametrize("method", ["wait_for_uid", "wait_for_removal"])
def test_cancel_stops_a_wait_within_one_status_poll(pcscd, virtual_card, reader, in_thread,
                                                    method):
    card_reader, cancel = reader(), threading.Event()
    if method == "wait_for_removal":
        card = virtual_card(0)
        card.insert()
        wait_reader_state(READER_0, present=True)
    pending = in_thread(getattr(card_reader, method), TAP_TIMEOUT_MS * 5, cancel)
    done, _ = futures.wait([pending], timeout=SHORT_TIMEOUT_MS / 1000)
    assert not done, "the wait ended on its own"  # so the cancel lands mid-wait
    cancel.set()
    cancelled_at = time.monotonic()
    with pytest.raises(Cancelled):
        pending.result(THREAD_JOIN_TIMEOUT_S)
    assert time.monotonic() - cancelled_at < PROMPT_S


def test_pcscd_restart_during_a_wait_then_a_tap_is_read(pcscd, virtual_card, reader, in_thread):
    card_reader = reader()
    assert card_reader.readers() == [READER_0, READER_1]  # the context exists before the restart
    pending = in_thread(card_reader.wait_for_uid, THREAD_JOIN_TIMEOUT_S * 1000)
    old_pid = pcscd.process.pid
    pcscd.restart()
    assert pcscd.process.pid != old_pid and not pending.done()
    card = virtual_card(0, UID_7)
    card.insert()
    assert pending.result(THREAD_JOIN_TIMEOUT_S) == UID_7
    assert card_reader.context_restarts >= 1


def test_pcscd_down_then_back_without_the_reader(pcscd, reader, in_thread):
    """pcscd stopped: a wait past its deadline says the service is unavailable; pcscd back
    without our reader (the reader was unplugged): the pending wait and new ones get NoReader."""
    waiting = reader()
    assert waiting.readers() == [READER_0, READER_1]
    pending = in_thread(waiting.wait_for_uid, THREAD_JOIN_TIMEOUT_S * 1000)
    try:
        pcscd.stop()
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable) as caught:
            reader().wait_for_uid(SHORT_TIMEOUT_MS)
        assert caught.value.code == scard.SCARD_E_NO_SERVICE
        assert time.monotonic() - started < SHORT_TIMEOUT_MS / 1000 + PROMPT_S
        assert not pending.done(), "the pending wait should still be waiting for pcscd"
        pcscd.start(with_readers=False)
        with pytest.raises(NoReader) as caught:
            pending.result(THREAD_JOIN_TIMEOUT_S)
        assert type(caught.value) is NoReader and "readers seen: none" in str(caught.value)
        started = time.monotonic()
        with pytest.raises(NoReader):
            reader(None).wait_for_uid(TAP_TIMEOUT_MS)  # no reader at all
        assert time.monotonic() - started < PROMPT_S
        assert reader(None).readers() == []
    finally:
        pcscd.restart()


def test_a_card_left_on_the_reader_reads_the_same_uid_every_time(pcscd, virtual_card, reader):
    """Without new_tap, every read of a present card asks it again (latency is measured by
    loadtest/bench_tap.py, not here)."""
    card = virtual_card(0, UID_7)
    card.insert()
    card_reader = reader()
    for _ in range(REPEATED_READS):
        assert card_reader.wait_for_uid(TAP_TIMEOUT_MS) == UID_7
    assert card.get_uid_answered == REPEATED_READS


def test_a_new_tap_needs_the_card_to_leave_and_come_back(pcscd, virtual_card):
    """After a read with new_tap, the same card left on the reader is not read again."""
    card = virtual_card(0)
    reader = CardReader(READER_0)
    try:
        card.insert()
        assert reader.wait_for_uid(TAP_TIMEOUT_MS, new_tap=True) == card.uid
        with pytest.raises(TapTimeout):
            reader.wait_for_uid(SHORT_TIMEOUT_MS, new_tap=True)
        assert reader.wait_for_uid(TAP_TIMEOUT_MS) == card.uid      # without new_tap: read
        card.remove()
        wait_reader_state(READER_0, present=False)
        card.insert()
        assert reader.wait_for_uid(TAP_TIMEOUT_MS, new_tap=True) == card.uid
        assert card.get_uid_answered == 3
    finally:
        reader.close()


def test_a_card_left_on_the_reader_across_a_restart_must_be_lifted(pcscd, virtual_card):
    """The agent restarted (a new CardReader) with a card that already paid still on the
    reader: it is not read until lifted and presented again, and the cashier is told."""
    card = virtual_card(0)
    card.insert()
    before_restart = CardReader(READER_0)
    try:
        assert before_restart.wait_for_uid(TAP_TIMEOUT_MS, new_tap=True) == card.uid
    finally:
        before_restart.close()
    after_restart = CardReader(READER_0)
    told: list[str] = []
    try:
        with pytest.raises(TapTimeout):
            after_restart.wait_for_uid(SHORT_TIMEOUT_MS, new_tap=True,
                                       on_lift_first=lambda: told.append("lift"))
        assert told == ["lift"] and card.get_uid_answered == 1
        card.remove()
        wait_reader_state(READER_0, present=False)
        card.insert()
        assert after_restart.wait_for_uid(TAP_TIMEOUT_MS, new_tap=True) == card.uid
        assert card.get_uid_answered == 2
    finally:
        after_restart.close()


def test_a_card_put_down_after_start_is_read_at_once(pcscd, virtual_card):
    """Only a card already there when the reader was first looked at must be lifted."""
    card = virtual_card(0)
    reader = CardReader(READER_0)
    try:
        assert reader.readers() == [READER_0, READER_1]
        with pytest.raises(TapTimeout):     # the first look: empty
            reader.wait_for_uid(SHORT_TIMEOUT_MS, new_tap=True)
        card.insert()
        assert reader.wait_for_uid(TAP_TIMEOUT_MS, new_tap=True) == card.uid
    finally:
        reader.close()
