"""Blocking PC/SC card reader for the terminal agent (the agent calls it through asyncio.to_thread).

It runs its own SCardGetStatusChange loop on pyscard's low-level API rather than CardMonitor,
which is a process-wide thread that stops for good when pcscd restarts (pyscard 2.x).
Every wait is cut into STATUS_POLL_MS slices so the caller's deadline and cancel event are
honoured; when pcscd goes away the context is re-established with a bounded backoff and the wait
carries on.
"""

from __future__ import annotations

import threading
import time

from smartcard import scard

STATUS_POLL_MS = 250  # longest time a cancel or the deadline waits to be noticed
BASELINE_TIMEOUT_MS = 2000  # the look at the reader when the agent starts
RECONNECT_BACKOFF_FIRST_MS = 10  # pcscd comes back in ~12 ms once started
RECONNECT_BACKOFF_MAX_MS = 250
GET_UID_APDU = [0xFF, 0xCA, 0x00, 0x00, 0x00]  # PC/SC part 3 GET DATA: UID of the card in field
SW_SUCCESS = (0x90, 0x00)
UID_LENGTHS_BYTES = (4, 7, 10)  # ISO 14443-3 single, double and triple size UIDs
PROTOCOLS = scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1

# pcscd went away. On SIGTERM a pending call gets F_COMM_ERROR, or W_SECURITY_VIOLATION when
# the socket was reset (pcsc-lite's name for ECONNRESET), then NO_SERVICE until it is back.
SERVICE_LOST = frozenset({scard.SCARD_E_NO_SERVICE, scard.SCARD_E_SERVICE_STOPPED,
                          scard.SCARD_E_INVALID_HANDLE, scard.SCARD_F_COMM_ERROR,
                          scard.SCARD_W_SECURITY_VIOLATION})
# The card left the field while we talked to it.
CARD_GONE = frozenset({scard.SCARD_W_REMOVED_CARD, scard.SCARD_E_NO_SMARTCARD,
                       scard.SCARD_W_RESET_CARD, scard.SCARD_W_UNPOWERED_CARD,
                       scard.SCARD_E_NOT_TRANSACTED})
READER_GONE = frozenset({scard.SCARD_E_UNKNOWN_READER, scard.SCARD_E_READER_UNAVAILABLE})


class CardReaderError(Exception):
    """Base of the reader's errors; message_fr is a short French text for the cashier."""

    message_fr = "Erreur du lecteur de cartes"

    def __init__(self, detail: str, *, code: int | None = None) -> None:
        if code is not None:
            detail = f"{detail} (0x{code & 0xFFFFFFFF:08X} {scard.SCardGetErrorMessage(code)})"
        super().__init__(detail)
        self.code = code


class NoReader(CardReaderError):
    message_fr = "Lecteur de cartes introuvable : vérifiez qu'il est branché"


class ServiceUnavailable(NoReader):
    """pcscd did not answer before the caller's deadline."""
    message_fr = "Service du lecteur de cartes indisponible"


class CardRemoved(CardReaderError):
    message_fr = "Carte retirée trop tôt : présentez-la à nouveau"


# pcsc-lite keeps a per-reader count of card insertions and removals in the event state's high word.
EVENT_COUNT_SHIFT = 16


class CardUnreadable(CardReaderError):
    message_fr = "Carte illisible : présentez-la à nouveau"


class TapTimeout(CardReaderError):
    message_fr = "Aucune carte présentée"


class Cancelled(CardReaderError):
    message_fr = "Lecture annulée"


class _ServiceLost(Exception):
    """Internal: the context is dead; drop it and wait for pcscd again."""


class CardReader:
    """One reader, chosen by exact name (None: the first listed). One call at a time; the
    PC/SC context is kept between calls and re-established after a pcscd restart."""

    def __init__(self, reader_name: str | None = None, *,
                 status_poll_ms: int = STATUS_POLL_MS) -> None:
        self.reader_name = reader_name
        self.status_poll_ms = status_poll_ms
        self.context_restarts = 0  # how many times a lost context was replaced (for metrics)
        self._context: int | None = None
        self._events_at_last_read: int | None = None
        # Until this reader has seen the reader's state (at start, and again after pcscd came
        # back: its insertion counts start over), a card found on it may be one that already
        # paid before an agent restart: with new_tap it must be lifted first.
        self._card_memory_lost = True

    def readers(self) -> list[str]:
        """The reader names pcscd lists now (a context lost to a pcscd restart is replaced once)."""
        for _ in range(2):
            try:
                return self._list_readers(self._connect_context(time.monotonic(), None))
            except _ServiceLost:
                self._lose_context()
        raise ServiceUnavailable("pcscd is not answering")

    def wait_for_uid(self, timeout_ms: int, cancel: threading.Event | None = None, *,
                     new_tap: bool = False, on_lift_first=None) -> bytes:
        """Wait for a card on the reader and return its UID. A card already there counts,
        unless `new_tap`: then the card read last time must have left the reader since (pcscd
        counts insertions and removals in the high word of the event state), so a card left
        on the reader after a sale is not charged again by the next one, nor after an agent
        restart (a card found on the reader at start must be lifted first). `on_lift_first()`
        is called when such a card is there, for the cashier's screen."""
        deadline = time.monotonic() + timeout_ms / 1000
        lift_said = False

        def accept(event_state: int) -> bool:
            nonlocal lift_said
            present = bool(event_state & scard.SCARD_STATE_PRESENT)
            if not new_tap:
                return present
            count = event_state >> EVENT_COUNT_SHIFT
            if self._card_memory_lost:      # first look since start or since pcscd came back
                self._card_memory_lost = False
                self._events_at_last_read = count if present else None
            if present and count == self._events_at_last_read:
                if on_lift_first is not None and not lift_said:
                    lift_said = True
                    on_lift_first()
                return False
            return present

        while True:
            found = self._wait_for_state(deadline, cancel, accept)
            if found is None:
                raise TapTimeout(f"no card within {timeout_ms} ms")
            reader, event_state = found
            try:
                uid = self._read_uid(reader)
                self._events_at_last_read = event_state >> EVENT_COUNT_SHIFT
                return uid
            except _ServiceLost as lost:
                self._lose_context()  # the card may still be there: wait and read again
                _raise_if_past(deadline, lost)

    def remember_card_present(self, timeout_ms: int = BASELINE_TIMEOUT_MS) -> bool:
        """At the agent's start: a card on the reader now may be one that already paid before a
        restart, so it counts as read (a new_tap wait wants it lifted first). True if one is
        there. When pcscd does not answer, the first wait takes this look instead."""
        found = self._wait_for_state(time.monotonic() + timeout_ms / 1000, None,
                                     lambda event_state: True)
        if found is None:
            return False
        self._card_memory_lost = False
        present = bool(found[1] & scard.SCARD_STATE_PRESENT)
        self._events_at_last_read = found[1] >> EVENT_COUNT_SHIFT if present else None
        return present

    def wait_for_removal(self, timeout_ms: int, cancel: threading.Event | None = None) -> bool:
        """True once no card is on the reader; False if one is still there at the deadline."""
        deadline = time.monotonic() + timeout_ms / 1000
        return self._wait_for_state(
            deadline, cancel, lambda event_state: bool(event_state & scard.SCARD_STATE_EMPTY)) is not None

    def close(self) -> None:
        self._drop_context()

    def _wait_for_state(self, deadline: float, cancel: threading.Event | None,
                        accept) -> tuple[str, int] | None:
        """Block on SCardGetStatusChange in short slices until `accept(event state)`, which sees
        every state the reader shows; returns (reader name, event state), or None at the
        deadline."""
        known_state, reader = scard.SCARD_STATE_UNAWARE, None
        while True:
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled by the caller")
            try:
                context = self._connect_context(deadline, cancel)
                if reader is None:
                    reader = self._resolve_reader(context)
                remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
                hresult, states = scard.SCardGetStatusChange(
                    context, min(self.status_poll_ms, remaining_ms), [(reader, known_state)])
                _check(hresult, ok={scard.SCARD_S_SUCCESS, scard.SCARD_E_TIMEOUT})
            except _ServiceLost as lost:
                self._lose_context()
                _raise_if_past(deadline, lost)
                known_state, reader = scard.SCARD_STATE_UNAWARE, None
                continue
            if hresult == scard.SCARD_S_SUCCESS:
                event_state = states[0][1]
                if event_state & (scard.SCARD_STATE_UNKNOWN | scard.SCARD_STATE_IGNORE):
                    raise NoReader(f"reader {reader!r} was unplugged")
                if accept(event_state):
                    return reader, event_state
                known_state = event_state & ~scard.SCARD_STATE_CHANGED
            if time.monotonic() >= deadline:
                return None

    def _read_uid(self, reader: str) -> bytes:
        hresult, card, protocol = scard.SCardConnect(
            self._context, reader, scard.SCARD_SHARE_SHARED, PROTOCOLS)
        _check(hresult, ok={scard.SCARD_S_SUCCESS}, doing="connect")
        try:
            hresult, response = scard.SCardTransmit(card, protocol, GET_UID_APDU)
            _check(hresult, ok={scard.SCARD_S_SUCCESS}, doing="GET UID")
        finally:
            scard.SCardDisconnect(card, scard.SCARD_LEAVE_CARD)  # fails harmlessly if gone
        if not response:
            # vpcd answers a card that vanished mid-command with an empty success; a reader
            # losing the card gives NOT_TRANSACTED or REMOVED_CARD instead (handled above).
            raise CardRemoved("the card gave no answer to GET UID")
        if len(response) < 2 or tuple(response[-2:]) != SW_SUCCESS:
            raise CardUnreadable(f"GET UID answered {bytes(response).hex(' ').upper()}")
        uid = bytes(response[:-2])
        if len(uid) not in UID_LENGTHS_BYTES:
            raise CardUnreadable(f"GET UID gave a {len(uid)}-byte UID: {uid.hex().upper()}")
        return uid

    def _resolve_reader(self, context: int) -> str:
        seen = self._list_readers(context)
        if self.reader_name is None and seen:
            return seen[0]
        if self.reader_name in seen:
            return self.reader_name
        wanted = "any reader" if self.reader_name is None else f"reader {self.reader_name!r}"
        raise NoReader(f"{wanted} not found; readers seen: {seen or 'none'}")

    @staticmethod
    def _list_readers(context: int) -> list[str]:
        hresult, names = scard.SCardListReaders(context, [])
        if hresult == scard.SCARD_E_NO_READERS_AVAILABLE:
            return []
        _check(hresult, ok={scard.SCARD_S_SUCCESS}, doing="list readers")
        return list(names)

    def _connect_context(self, deadline: float, cancel: threading.Event | None) -> int:
        """The live context, or a new one: retried with a doubling backoff while pcscd is down,
        until the caller's deadline (then ServiceUnavailable)."""
        backoff_ms = RECONNECT_BACKOFF_FIRST_MS
        while self._context is None:
            hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
            if hresult == scard.SCARD_S_SUCCESS:
                self._context = context
                break
            if hresult not in SERVICE_LOST:
                raise CardReaderError("cannot reach pcscd", code=hresult)
            pause_s = min(backoff_ms / 1000, deadline - time.monotonic())
            if pause_s <= 0:
                raise ServiceUnavailable("pcscd is not answering", code=hresult)
            if cancel is None:
                time.sleep(pause_s)  # backoff while pcscd is down, not synchronisation
            elif cancel.wait(pause_s):
                raise Cancelled("cancelled by the caller")
            backoff_ms = min(backoff_ms * 2, RECONNECT_BACKOFF_MAX_MS)
        return self._context

    def _drop_context(self) -> None:
        if self._context is not None:
            scard.SCardReleaseContext(self._context)  # fails harmlessly once pcscd is gone
            self._context = None

    def _lose_context(self) -> None:
        self._drop_context()
        self.context_restarts += 1
        self._card_memory_lost = True   # a new pcscd counts insertions from zero again


def _raise_if_past(deadline: float, lost: _ServiceLost) -> None:
    """Keeps a pcscd that drops every call from looping us past the caller's deadline."""
    if time.monotonic() >= deadline:
        raise ServiceUnavailable("pcscd keeps dropping the connection", code=lost.args[0])


def _check(hresult: int, *, ok: set[int], doing: str = "wait for the card") -> None:
    """Turn a PC/SC status into this module's errors; SERVICE_LOST becomes _ServiceLost so the
    caller can re-establish the context."""
    if hresult in ok:
        return
    if hresult in SERVICE_LOST:
        raise _ServiceLost(hresult)
    if hresult in CARD_GONE:
        raise CardRemoved(f"card left during {doing}", code=hresult)
    if hresult in READER_GONE:
        raise NoReader(f"reader gone during {doing}", code=hresult)
    if hresult == scard.SCARD_W_UNRESPONSIVE_CARD:
        raise CardUnreadable(f"card mute during {doing}", code=hresult)
    raise CardReaderError(f"PC/SC error during {doing}", code=hresult)
