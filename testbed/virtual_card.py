"""A virtual contactless card for vpcd, the virtual reader driver loaded by pcscd.

The card is vpcd's TCP client: connecting to the reader's port places the card on the reader,
closing the connection lifts it. Every message, both ways, is a 2-byte big-endian length then the
payload; a 1-byte payload from vpcd is a control (00 power off, 01 power on, 02 reset, 04 get ATR)
and anything longer is a command APDU. The card answers GET UID (FF CA 00 00 00) with its UID and
90 00, as a contactless reader does for the card in its field, and 6D 00 to anything else.
"""

from __future__ import annotations

import socket
import struct
import threading

VPCD_HOST = "127.0.0.1"
VPCD_PORT_BY_READER = {0: 35963, 1: 35964}  # Debian's vpcd: "Virtual PCD 00 00", "... 00 01"
ATR = bytes.fromhex("3B8180018080")  # ISO 14443-4 type A card, no historical bytes
GET_UID = bytes.fromhex("FFCA000000")
DEFAULT_UID = bytes.fromhex("04A1B2C3")
SW_OK = b"\x90\x00"
SW_INS_NOT_SUPPORTED = b"\x6d\x00"
CONTROL_GET_ATR = 0x04  # the other controls (00 power off, 01 on, 02 reset) get no reply
LENGTH = struct.Struct(">H")
CONNECT_TIMEOUT_S = 2.0
JOIN_TIMEOUT_S = 2.0


class VirtualCard:
    """One card for one vpcd reader slot; insert() and remove() may be repeated.

    Knobs for tests, read at each GET UID: `vanish_on_get_uid` closes the connection instead of
    answering (the card leaves the field mid-read); `get_uid_reply` replaces the whole answer
    (e.g. an error status word, or a UID of a bad length)."""

    def __init__(self, reader_index: int = 0, uid: bytes = DEFAULT_UID,
                 *, host: str = VPCD_HOST) -> None:
        self.reader_index = reader_index
        self.address = (host, VPCD_PORT_BY_READER[reader_index])
        self.uid = uid
        self.vanish_on_get_uid = False
        self.get_uid_reply: bytes | None = None
        self.vanished = threading.Event()  # set when the card left instead of answering GET UID
        self._answered = 0
        self._answered_changed = threading.Condition()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def get_uid_answered(self) -> int:
        """How many GET UID this card has answered, across insertions."""
        with self._answered_changed:
            return self._answered

    def wait_get_uid_answered(self, count: int, timeout_s: float) -> bool:
        with self._answered_changed:
            return self._answered_changed.wait_for(lambda: self._answered >= count, timeout_s)

    @property
    def inserted(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def insert(self, uid: bytes | None = None) -> None:
        """Place the card (connect to vpcd); returns once the TCP connection is up. pcscd notices
        the card at its next presence poll, so tests wait on the reader state afterwards."""
        if self.inserted:
            raise RuntimeError("card already inserted")
        self.remove()  # closes what is left of a card that vanished or lost its reader
        if uid is not None:
            self.uid = uid
        self.vanished.clear()
        sock = socket.create_connection(self.address, timeout=CONNECT_TIMEOUT_S)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, args=(sock,), daemon=True,
                                        name=f"virtual-card-{self.address[1]}")
        self._thread.start()

    def remove(self) -> None:
        """Lift the card: close the connection (vpcd then reports the slot empty)."""
        sock, thread = self._sock, self._thread
        self._sock = self._thread = None
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes the serving thread's recv
        except OSError:
            pass  # already shut by a vanish, or reset by vpcd
        thread.join(JOIN_TIMEOUT_S)
        sock.close()  # after the join: the thread no longer uses the descriptor
        if thread.is_alive():
            raise RuntimeError("virtual card thread did not stop")

    def _serve(self, sock: socket.socket) -> None:
        try:
            while (request := _receive(sock)) is not None:
                # Counters are updated before the card acts, so a test that saw the reader's
                # result also sees them.
                if request == GET_UID and self.vanish_on_get_uid:
                    self.vanished.set()
                    sock.shutdown(socket.SHUT_RDWR)  # leaves the field instead of answering
                    return
                if request == GET_UID:
                    with self._answered_changed:
                        self._answered += 1
                        self._answered_changed.notify_all()
                reply = self._answer(request)
                if reply is not None:
                    sock.sendall(LENGTH.pack(len(reply)) + reply)  # one segment
        except OSError:
            return  # connection closed under us: remove(), or vpcd went away with pcscd

    def _answer(self, request: bytes) -> bytes | None:
        if len(request) == 1:
            return ATR if request[0] == CONTROL_GET_ATR else None  # power on/off, reset: no reply
        if request == GET_UID:
            return self.get_uid_reply if self.get_uid_reply is not None else self.uid + SW_OK
        return SW_INS_NOT_SUPPORTED


def _receive(sock: socket.socket) -> bytes | None:
    header = _receive_exactly(sock, LENGTH.size)
    if header is None:
        return None
    return _receive_exactly(sock, LENGTH.unpack(header)[0])


def _receive_exactly(sock: socket.socket, size: int) -> bytes | None:
    """vpcd writes the length and the payload in two writes; without QUICKACK before every recv,
    delayed ACKs cost about 44 ms per APDU (measured with pcscd 1.9.9 and vpcd)."""
    data = b""
    while len(data) < size:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data
