"""A locust user that is one shop terminal speaking the real, MAC'd terminal protocol.

Each user takes a terminal of its own from the key file (loadtest.bench_keys writes it: TR-31
blocks and transport keys) and keeps it for its whole life: a terminal sends one message at a time
and its KSN counter must increase, else the server answers 63 — two users sharing a terminal
would race on the counter. Requests are built by the project's TerminalClient builders (no
network), encoded by the codec, signed by TerminalKeys, posted by locust's FastHttpUser (gevent:
no asyncio here), and the answer's MAC is checked before anything is believed.

Locust sees one request name per message type ("purchase", "reversal", "refund", and "… retry"
for the same bytes sent again). Failures are what a healthy system never does: no answer, an
answer without a valid MAC, a format error (30), a security refusal (63), unavailable or
malfunction (91, 96), or an answer the scenario knows to be wrong. Declines such as 51, 54 or 57
are business outcomes, not failures.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, Collection

import gevent
from locust import FastHttpUser, events
from locust import stats as locust_stats
from locust.exception import StopUser
from locust.runners import WorkerRunner

from loadtest.approvals_journal import AnswersJournal
from loadtest.bench_keys import load_terminal_keys
from loadtest.load_config import LoadConfig, TerminalSlot, load_config
from loadtest.reversal_duty import (REVERSAL_BACKOFF_FIRST_MS, REVERSAL_BACKOFF_MAX_MS,
                                    UNCERTAIN_CODES)
from terminal_protocol.client import TERMINAL_TIMEOUT_MS, TerminalClient
from terminal_protocol.codec import ProtocolError, decode_response, encode_request
from terminal_protocol.messages import Purchase, Refund, Request, Response, Reversal
from terminal_protocol.response_codes import APPROVED_CODES, describe
from terminal_protocol.terminal_keys import ForgedResponse, TerminalKeys
from terminal_protocol.transport import (JSON_CONTENT_TYPE, KSN_HEADER, MAC_HEADER,
                                         TERMINAL_ID_HEADER, TERMINAL_PATH)

log = logging.getLogger("hdfpay.loadtest")

# Never a normal outcome: the system failed the terminal (or the load test is wrong).
FAILURE_CODES = frozenset({"30", "63", "91", "96"})
MESSAGE_TYPES = {Purchase: "purchase", Reversal: "reversal", Refund: "refund"}
TERMINAL_TIMEOUT_S = TERMINAL_TIMEOUT_MS / 1000
# A void or a refund without an answer is resent (same bytes, new KSN) until it is answered,
# never given up: money is owed to the student. The back-off doubles from the first to the cap.
# One still unanswered when locust stops the user stays owed in the journal, and `hdfpay
# loadtest` reports it (loadtest.approvals_journal.read_owed) instead of dropping it.
VOID_BACKOFF_FIRST_S = REVERSAL_BACKOFF_FIRST_MS / 1000
VOID_BACKOFF_MAX_S = REVERSAL_BACKOFF_MAX_MS / 1000
# Beyond locust's CSV interval, for its writer's last turn at exit.
CSV_LAST_WRITE_MARGIN_S = 0.2
# A cashier's pause varies around its mean: uniform in [1 - j, 1 + j] times the mean.
THINK_TIME_JITTER = 0.5


@dataclass
class Terminal:
    """What one terminal holds: its id, its shop's category, its keys and counter, its STAN."""
    terminal_id: str
    category: str | None
    keys: TerminalKeys
    messages: TerminalClient       # used only for its request builders (STAN, request ids)


class TerminalPool:
    """The process's terminals, each lent to one user at a time; a terminal given back keeps its
    counter and STAN, so the next user that takes it continues them."""

    def __init__(self, config: LoadConfig) -> None:
        slots: list[TerminalSlot] = list(config.terminals)
        keys = load_terminal_keys(config.key_file, [s.terminal_id for s in slots],
                                  config.counter_start)
        self._free = [Terminal(s.terminal_id, s.category, k, TerminalClient("http://unused",
                                                                              s.terminal_id))
                      for s, k in zip(slots, keys)]
        self._free.reverse()          # pop() hands them out in the listed order
        self._lock = threading.Lock()
        self.size = len(slots)

    def take(self) -> Terminal | None:
        with self._lock:
            return self._free.pop() if self._free else None

    def give_back(self, terminal: Terminal) -> None:
        with self._lock:
            self._free.append(terminal)


_shared: dict[str, object] = {}


def _pool() -> TerminalPool:
    if "pool" not in _shared:
        _shared["pool"] = TerminalPool(load_config())
    return _shared["pool"]  # type: ignore[return-value]


def _journal() -> AnswersJournal:
    if "journal" not in _shared:
        _shared["journal"] = AnswersJournal(load_config().journal_dir)
    return _shared["journal"]  # type: ignore[return-value]


@events.init.add_listener
def _one_process_only(environment, **_kwargs) -> None:
    """Worker processes would each load the same key file and share terminals (63s): refuse."""
    if isinstance(environment.runner, WorkerRunner):
        log.error("these scenarios run in one locust process (each terminal belongs to one "
                  "user): do not use --processes or --worker")
        environment.process_exit_code = 2
        gevent.spawn_later(0, environment.runner.quit)


@events.quitting.add_listener
def _close_journal(**_kwargs) -> None:
    if "journal" in _shared:
        _journal().close()


@events.quitting.add_listener
def _last_csv_rows(environment, **_kwargs) -> None:
    """locust rewrites its CSV every CSV_STATS_INTERVAL_SEC and only closes it at exit, so the
    requests of the last interval would be missing from it: now that the users have stopped,
    give its writer one more turn before it closes the files."""
    options = environment.parsed_options
    if options is not None and getattr(options, "csv_prefix", None):
        gevent.sleep(locust_stats.CSV_STATS_INTERVAL_SEC + CSV_LAST_WRITE_MARGIN_S)


@dataclass(frozen=True)
class Answer:
    """A response whose MAC verified, with its exact bytes (a retry must get the same ones)."""
    response: Response
    body: bytes

    @property
    def rc(self) -> str:
        return self.response.rc

    @property
    def approved(self) -> bool:
        return self.response.rc in APPROVED_CODES


Check = Callable[[Answer], str | None]


class TerminalUser(FastHttpUser):
    """Subclasses write the tasks; this class holds the terminal and speaks the protocol."""

    abstract = True
    network_timeout = TERMINAL_TIMEOUT_S
    connection_timeout = TERMINAL_TIMEOUT_S
    max_retries = 0               # a transport retry would resend the same KSN: a replay (63)

    terminal: Terminal
    rng: random.Random

    def on_start(self) -> None:
        terminal = _pool().take()
        if terminal is None:
            log.error("more users than terminals (%d): every user needs a terminal of its own",
                      _pool().size)
            self.environment.process_exit_code = 2
            gevent.spawn_later(0, self.environment.runner.quit)
            raise StopUser()
        self.terminal = terminal
        self.config = load_config()
        seed = self.config.random_seed
        self.rng = random.Random(f"{seed}:{terminal.terminal_id}") if seed else random.Random()

    def on_stop(self) -> None:
        if getattr(self, "terminal", None) is not None:
            _pool().give_back(self.terminal)
            self.terminal = None

    def wait_time(self) -> float:
        mean_s = self.config.think_ms / 1000
        return mean_s * self.rng.uniform(1 - THINK_TIME_JITTER, 1 + THINK_TIME_JITTER)

    # -- messages -------------------------------------------------------------------------

    def purchase(self, card_uid: bytes, amount_cents: int, *, partial_ok: bool = True,
                 expected: Collection[str] | None = None) -> tuple[Purchase, Answer | None]:
        """A sale; without a trustworthy answer (none, forged, 91, 96) the terminal voids it at
        once, as PROTOCOL.md requires, and the sale counts as not made (answer None)."""
        request = self.terminal.messages.purchase_request(card_uid, amount_cents,
                                                          partial_ok=partial_ok)
        answer = self.exchange(request, "purchase", expected=expected)
        if answer is None or answer.rc in UNCERTAIN_CODES:
            self.void(request.request_id, expected={"00", "25"})
            return request, None
        return request, answer

    def void(self, original_request_id: str, *,
             expected: Collection[str] | None = frozenset({"00"})) -> Answer:
        """A reversal, resent with the same bytes under new KSNs until it gets an answer."""
        request = self.terminal.messages.reversal_request(original_request_id)
        return self.until_answered(request, expected=expected)

    def refund(self, original_rrn: str, amount_cents: int, card: bytes, *,
               expected: Collection[str] | None = frozenset({"00"})) -> Answer:
        """A refund is never started twice for one item: resent with the same bytes instead."""
        request = self.terminal.messages.refund_request(original_rrn, amount_cents, card)
        return self.until_answered(request, expected=expected)

    def until_answered(self, request: Request, *, expected: Collection[str] | None = None,
                       check: Check | None = None) -> Answer:
        """Resend the same bytes under new KSNs while there is no answer, or 91/96 (the ledger
        may or may not hold the message: only its stored answer tells), for as long as it
        takes: journaled as owed first, settled once answered."""
        body = encode_request(request)
        name = MESSAGE_TYPES[type(request)]
        _journal().owe(self.terminal.terminal_id, request.request_id, name)
        backoff_s = VOID_BACKOFF_FIRST_S
        attempt = 0
        while True:
            answer = self.exchange(request, name if attempt == 0 else f"{name} retry",
                                   expected=expected, check=check, body=body)
            if answer is not None and answer.rc not in UNCERTAIN_CODES:
                _journal().settled(self.terminal.terminal_id, request.request_id)
                return answer
            attempt += 1
            time.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, VOID_BACKOFF_MAX_S)

    def exchange(self, request: Request, name: str, *, expected: Collection[str] | None = None,
                 check: Check | None = None, body: bytes | None = None) -> Answer | None:
        """Sign and post one message (its exact bytes, `body` for a retry), check the answer's
        MAC, report it to locust under `name`, journal it. None when there was no answer that
        the terminal may believe."""
        body = encode_request(request) if body is None else body
        ksn, mac = self.terminal.keys.sign_request("POST", TERMINAL_PATH, body)
        headers = {TERMINAL_ID_HEADER: self.terminal.terminal_id,
                   "Content-Type": JSON_CONTENT_TYPE,
                   KSN_HEADER: ksn.hex().upper(), MAC_HEADER: mac.hex().upper()}
        with self.client.post(TERMINAL_PATH, data=body, headers=headers, name=name,
                              catch_response=True) as reply:
            answer, problem = self._read(reply, ksn)
            if problem is None and answer is not None:
                problem = _judge(answer, expected, check)
            if problem is None:
                reply.success()
            else:
                reply.failure(problem)
        if answer is not None:
            _journal().record(self.terminal.terminal_id, request.request_id,
                              MESSAGE_TYPES[type(request)], answer.rc,
                              answer.response.approved_cents)
        return answer

    def _read(self, reply, ksn: bytes) -> tuple[Answer | None, str | None]:
        status = reply.status_code
        if not status or reply.headers is None:
            return None, f"no answer: {getattr(reply, 'error', None)!r}"
        try:
            payload = reply.content or b""
        except Exception as exc:  # the connection broke while reading the body
            return None, f"no answer (HTTP {status}): {exc!r}"
        try:
            self.terminal.keys.check_response(ksn, status, payload,
                                              _unhex(reply.headers.get(MAC_HEADER)))
        except ForgedResponse:
            return None, f"HTTP {status} without a valid MAC: no answer"
        try:
            return Answer(decode_response(payload), payload), None
        except ProtocolError as exc:
            return None, f"HTTP {status}, unreadable answer: {exc}"


def _judge(answer: Answer, expected: Collection[str] | None, check: Check | None) -> str | None:
    rc = answer.rc
    if rc in FAILURE_CODES and (expected is None or rc not in expected):
        detail = f" ({answer.response.detail})" if answer.response.detail else ""
        return f"rc {rc} {describe(rc).meaning}{detail}"
    if expected is not None and rc not in expected:
        return f"rc {rc} {describe(rc).meaning}, expected {'/'.join(sorted(expected))}"
    return check(answer) if check is not None else None


def _unhex(text: str | None) -> bytes | None:
    try:
        return bytes.fromhex(text) if text else None
    except ValueError:
        raise ForgedResponse("malformed response MAC") from None
