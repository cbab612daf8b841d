"""The terminal's rule, for the asyncio load drivers (chaos, bench, open loop): a purchase with no
trustworthy answer is reversed, and the same reversal is resent until it is answered.

PROTOCOL.md: no answer in time, an answer without a valid MAC, 91 or 96 all mean "the ledger
may or may not hold this purchase"; only the reversal's answer tells (00: it held it and gave the
money back, 25: it never had it and now never will). So a driver never gives up on money owed:
it resends the reversal's exact bytes (under a new KSN each time) with a bounded backoff, and
stops only at its run's last bound, reporting what is still owed instead of dropping it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp

from terminal_protocol.client import TerminalClient
from terminal_protocol.codec import ProtocolError, decode_response, encode_request
from terminal_protocol.messages import Request, Response
from terminal_protocol.terminal_keys import ForgedResponse

# The ledger may or may not hold the message: only a retry's (stored) answer tells.
UNCERTAIN_CODES = frozenset({"91", "96"})
# A reversal's answers that settle the debt.
SETTLED_CODES = frozenset({"00", "25"})
# Between two tries of the same reversal: doubling from the first, never above the cap (a
# failover takes seconds; a terminal must not hammer the server meanwhile).
REVERSAL_BACKOFF_FIRST_MS = 100
REVERSAL_BACKOFF_MAX_MS = 2000
# What the network can throw at one exchange: all of it means "no answer".
NO_ANSWER_ERRORS = (TimeoutError, aiohttp.ClientError, ProtocolError, ForgedResponse)


async def exchange(client: TerminalClient, request: Request | bytes) -> Response | None:
    """One signed exchange; None when there was no answer the terminal may believe."""
    body = request if isinstance(request, bytes) else encode_request(request)
    try:
        return decode_response(await client.send_raw(body))
    except NO_ANSWER_ERRORS:
        return None


def uncertain(response: Response | None) -> bool:
    """Whether a purchase with this answer must be reversed."""
    return response is None or response.rc in UNCERTAIN_CODES


async def reverse_until_answered(client: TerminalClient, reversal: bytes,
                                 give_up_at: float | None = None) -> Response | None:
    """Resend the reversal's exact bytes until an answer other than 91/96 comes back (normally
    00 or 25). None only once `give_up_at` (time.monotonic()) has passed: the caller reports
    the purchase as money still owed."""
    backoff_s = REVERSAL_BACKOFF_FIRST_MS / 1000
    while True:
        response = await exchange(client, reversal)
        if not uncertain(response):
            return response
        if give_up_at is not None and time.monotonic() + backoff_s >= give_up_at:
            return None
        await asyncio.sleep(backoff_s)
        backoff_s = min(backoff_s * 2, REVERSAL_BACKOFF_MAX_MS / 1000)


# A purchase's reversal goes under the purchase's request id with this suffix, so that the
# benchmarks find it (and its tag) in the ledger.
REVERSAL_ID_SUFFIX = "-r"


@dataclass(frozen=True)
class Sale:
    """A purchase as a terminal lived it: its answer, or why there was none, and its reversal's
    answer when it needed one (None with `owed`: still unanswered at the run's last bound)."""
    answer: Response | None
    answered_at: float                 # time.perf_counter() when the purchase's exchange ended
    error: str | None = None           # "timeout", "error:<exception>": no answer
    reversal: Response | None = None
    owed: bool = False

    @property
    def outcome(self) -> str:
        """The purchase's response code, or why there was none."""
        return self.answer.rc if self.answer is not None else (self.error or "none")


async def sell(client: TerminalClient, card_uid: bytes, amount_cents: int, request_id: str,
               give_up_at: float | None = None) -> Sale:
    """One purchase, reversed until answered when its answer is not to be trusted."""
    error = None
    try:
        answer = await client.purchase(card_uid, amount_cents, request_id=request_id)
    except TimeoutError:
        answer, error = None, "timeout"
    except (aiohttp.ClientError, ProtocolError, ForgedResponse) as exc:
        answer, error = None, f"error:{type(exc).__name__}"
    answered_at = time.perf_counter()
    if not uncertain(answer):
        return Sale(answer, answered_at, error)
    reversal = client.reversal_request(request_id,
                                       request_id=f"{request_id}{REVERSAL_ID_SUFFIX}")
    settled = await reverse_until_answered(client, encode_request(reversal), give_up_at)
    return Sale(answer, answered_at, error, settled, owed=settled is None)
