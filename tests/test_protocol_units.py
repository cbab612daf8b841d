"""Pure logic of the terminal protocol: amounts, codes, codec, cashier texts."""

from __future__ import annotations

import pytest

from terminal_protocol.amounts import AmountError, format_euros, parse_euros
from terminal_protocol.cashier_display import cashier_lines
from terminal_protocol.codec import ProtocolError, decode_request, encode_request, request_fingerprint
from terminal_protocol.messages import (LOCAL_TIME_MAX_YEAR, LOCAL_TIME_MIN_YEAR, Purchase, Response,
                                        local_time_text)
from terminal_protocol.response_codes import RESPONSE_CODES, describe


@pytest.mark.parametrize("text, cents", [("12,50", 1250), ("12.5", 1250), ("0,01", 1), ("7", 700),
                                         (" 3,20 € ", 320), ("100 EUR", 10000)])
def test_parse_euros(text, cents):
    assert parse_euros(text) == cents


@pytest.mark.parametrize("text", ["", "-5", "1,234", "1 000", "douze", "12,", "1e3", "99999999"])
def test_parse_euros_refuses(text):
    with pytest.raises(AmountError) as refused:
        parse_euros(text)
    assert str(refused.value).startswith(f"invalid amount {text!r}")          # operators: English
    assert refused.value.cashier_text.startswith(f"Montant invalide : {text!r}")  # cashiers: French


def test_format_euros():
    assert format_euros(123456) == "1\u202f234,56\u00a0€"
    assert format_euros(5) == "0,05\u00a0€"


def test_every_design_code_has_a_french_text():
    for code in ["00", "10", "14", "41", "43", "62", "54", "57", "51", "58", "61", "63", "94",
                 "25", "91", "96", "30"]:
        assert RESPONSE_CODES[code].cashier_text
    assert describe("77").cashier_text == "Refus (code 77)"


def _purchase(**changes) -> Purchase:
    fields = dict(v=1, request_id="unit-test-01", stan=5, card_uid="04000000000005",
                  amount_cents=100, local_time="2026-11-26T10:00:00", partial_ok=True)
    fields.update(changes)
    return Purchase(**fields)


def test_codec_round_trip_and_fingerprint():
    request = _purchase()
    assert decode_request(encode_request(request)) == request
    assert request_fingerprint(request) == request_fingerprint(decode_request(encode_request(request)))
    assert request_fingerprint(request) != request_fingerprint(_purchase(amount_cents=101))


def test_the_fingerprint_of_a_stored_purchase_is_unchanged():
    """A retry is matched with its stored original by this hash: it must not change across an
    upgrade (local_time became a checked string; msgpack wrote the datetime as the same text)."""
    assert request_fingerprint(_purchase()).hex() == (
        "160d76acc616dbaf9b39558b734038dc413972e76f3113bf7fd4554fe66d047b")


def _purchase_body(local_time: str) -> bytes:
    return encode_request(_purchase()).replace(b"2026-11-26T10:00:00", local_time.encode())


@pytest.mark.parametrize("local_time", [
    f"{LOCAL_TIME_MIN_YEAR}-01-01T00:00:00", f"{LOCAL_TIME_MAX_YEAR}-12-31T23:59:59",
    "2028-02-29T12:00:00"])
def test_local_time_accepted(local_time):
    request = decode_request(_purchase_body(local_time))
    assert request.local_time == local_time
    assert local_time_text(request.local_datetime) == local_time


@pytest.mark.parametrize("local_time", [
    "2026-11-26 10:00:00",            # a space for T
    "2026-11-26t10:00:00",            # a lower-case t
    "2026-11-26T10:00:00.5",          # fractional seconds
    "2026-11-26T10:00:00.000000",
    "2026-11-26T10:00",               # no seconds
    "2026-11-26",                     # a date only
    "2026-11-26T10:00:00Z",           # a zone
    "2026-11-26T10:00:00+01:00",
    "20261126T100000",                # the basic format
    "0001-01-01T00:00:00",            # years outside the bound
    "9999-12-31T23:59:59",
    f"{LOCAL_TIME_MIN_YEAR - 1}-12-31T23:59:59",
    f"{LOCAL_TIME_MAX_YEAR + 1}-01-01T00:00:00",
    "2026-02-29T10:00:00",            # not a date
    "2026-11-26T24:00:00",
    "2026-12-31T23:59:60",            # a leap second
    "２０２６-11-26T10:00:00",        # non-ASCII digits
    "2026-11-26T10:00:00\\n",        # a trailing newline (JSON escape)
])
def test_local_time_refused(local_time):
    with pytest.raises(ProtocolError, match="local_time"):
        decode_request(_purchase_body(local_time))


def test_decode_refuses_oversized_bodies_before_parsing():
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_request(b" " * 10_000)


def test_cashier_lines_for_a_partial_approval():
    lines = cashier_lines(Response(v=1, type="purchase", rc="10", requested_cents=5000,
                                   approved_cents=3000, balance_cents=0, rrn="633010000001",
                                   auth_code="000001"))
    assert lines[0].startswith("ACCEPTÉ PARTIELLEMENT")
    assert "20,00" in lines[1]


def test_cashier_lines_for_a_decline():
    assert cashier_lines(Response(v=1, type="purchase", rc="43"))[0] == "REFUSÉ : Carte déclarée volée (code 43)"
