"""Terminal messages as data (the spec lives in PROTOCOL.md).

Requests are a tagged union on "type"; unknown fields are refused, every field is bounded.
Responses are built by the ledger (so that a retry replays the stored bytes) and decoded here by
terminals.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal, Union

import msgspec

from terminal_protocol.response_codes import APPROVED_CODES

PROTOCOL_VERSION = 1
# A format bound, far above any business limit (those answer 61): 1,000,000.00 €.
AMOUNT_CENTS_MAX_ACCEPTED = 100_000_000
REQUEST_ID_MIN_CHARS = 8
REQUEST_ID_MAX_CHARS = 64
STAN_MAX = 999_999

# \Z, not $: $ would accept a trailing newline.
RequestId = Annotated[str, msgspec.Meta(
    pattern=rf"^[A-Za-z0-9_-]{{{REQUEST_ID_MIN_CHARS},{REQUEST_ID_MAX_CHARS}}}\Z")]
Stan = Annotated[int, msgspec.Meta(ge=0, le=STAN_MAX)]
AmountCents = Annotated[int, msgspec.Meta(gt=0, le=AMOUNT_CENTS_MAX_ACCEPTED)]
# ISO 14443 UIDs are 4, 7 or 10 bytes; upper-case hex.
CardUid = Annotated[str, msgspec.Meta(pattern=r"^(?:[0-9A-F]{8}|[0-9A-F]{14}|[0-9A-F]{20})\Z")]
Rrn = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{12}\Z")]
# The terminal's wall clock, recorded only (the server decides with its own): exactly
# YYYY-MM-DDTHH:MM:SS, no zone, no fraction, no space for T, a real date within a sane range
# (a till whose clock reset to 1970, or a parser's year 0001 or 9999, is a broken terminal).
# A string on the wire, checked here; msgpack hashes it as the datetime it replaced (the same text),
# so request fingerprints are unchanged.
LOCAL_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
LOCAL_TIME_MIN_YEAR = 2000
LOCAL_TIME_MAX_YEAR = 2099
LocalTime = Annotated[str, msgspec.Meta(
    pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\Z")]


def local_time_text(when: dt.datetime) -> str:
    """A naive wall-clock time in the protocol's one form (seconds kept, fraction dropped)."""
    return when.replace(microsecond=0, tzinfo=None).strftime(LOCAL_TIME_FORMAT)


def parse_local_time(text: str) -> dt.datetime:
    """The datetime of a local_time that matched the pattern; ValueError if not a real date or
    outside LOCAL_TIME_MIN_YEAR..LOCAL_TIME_MAX_YEAR."""
    try:
        when = dt.datetime.strptime(text, LOCAL_TIME_FORMAT)
    except ValueError:
        raise ValueError(f"local_time {text!r} is not a real date and time") from None
    if not LOCAL_TIME_MIN_YEAR <= when.year <= LOCAL_TIME_MAX_YEAR:
        raise ValueError(f"local_time year {when.year} is outside "
                         f"{LOCAL_TIME_MIN_YEAR}-{LOCAL_TIME_MAX_YEAR}")
    return when


class _Request(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, frozen=True):
    v: Literal[1]
    request_id: RequestId
    stan: Stan


class Purchase(_Request, tag="purchase"):
    card_uid: CardUid
    amount_cents: AmountCents
    local_time: LocalTime
    partial_ok: bool

    def __post_init__(self) -> None:
        parse_local_time(self.local_time)

    @property
    def local_datetime(self) -> dt.datetime:
        return parse_local_time(self.local_time)


class Reversal(_Request, tag="reversal"):
    original_request_id: RequestId

    def __post_init__(self) -> None:
        if self.original_request_id == self.request_id:
            raise ValueError("a reversal needs a request id of its own")


class Refund(_Request, tag="refund"):
    """Money back for an item returned, to the card tapped for it (the purchase's student's)."""

    original_rrn: Rrn
    amount_cents: AmountCents
    card_uid: CardUid


# A day's batch at a busy shop is a few hundred messages; these bound what a batch may claim.
BATCH_COUNT_MAX = 1_000_000
BATCH_TOTAL_CENTS_MAX = 10_000_000_000
BatchCount = Annotated[int, msgspec.Meta(ge=0, le=BATCH_COUNT_MAX)]
BatchCents = Annotated[int, msgspec.Meta(ge=0, le=BATCH_TOTAL_CENTS_MAX)]


class BatchTotals(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What was approved in a batch, by message type: counts, and amounts approved in cents."""

    purchases_count: BatchCount = 0
    purchases_cents: BatchCents = 0
    reversals_count: BatchCount = 0
    reversals_cents: BatchCents = 0
    refunds_count: BatchCount = 0
    refunds_cents: BatchCents = 0


class BatchClose(_Request, tag="batch_close"):
    """The end of the terminal's batch: its totals, compared by the ledger with its own."""

    totals: BatchTotals


Request = Union[Purchase, Reversal, Refund, BatchClose]


class BatchDifference(msgspec.Struct, frozen=True):
    field: str
    terminal: int | None
    ledger: int


class Response(msgspec.Struct, frozen=True):
    """The server's answer to a request (any type). Absent fields are None."""

    v: int
    type: str
    rc: str
    request_id: str | None = None
    stan: int | None = None
    requested_cents: int | None = None
    approved_cents: int = 0
    balance_cents: int | None = None
    auth_code: str | None = None
    rrn: str | None = None
    detail: str | None = None
    # Refund declined 13: what is left to refund of the sale.
    refundable_cents: int | None = None
    # Batch close only.
    batch_number: int | None = None
    ledger_totals: BatchTotals | None = None
    differences: tuple[BatchDifference, ...] = ()

    @property
    def approved(self) -> bool:
        return self.rc in APPROVED_CODES
