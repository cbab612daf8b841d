"""Model-based testing of the rules (issue 15 §4): hypothesis drives random sequences of
purchases, partial approvals, retries, reversals, refunds, reloads with pending fees, the 1 May
expiry, oppositions, replacements, renewals and clock moves across 1 July, 1 May and both DST nights against the real
server and database, and compares every answer and balance with tests/rules_model.py.

Short in CI (MODEL_EXAMPLES_CI × MODEL_STEPS_CI); long with HDFPAY_MODEL_EXAMPLES (and
HDFPAY_MODEL_STEPS). Shrunk failing sequences are kept below as plain regression tests."""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid

import pytest
from hypothesis import HealthCheck, settings as hypothesis_settings, strategies as st
from hypothesis.stateful import (Bundle, RuleBasedStateMachine, invariant, rule,
                                 run_state_machine_as_test)

from ledger.cards import OPPOSITION_REASONS

from conftest import SCHOOL_DAY
from rules_harness import STUDENTS, TERMINALS, UNKNOWN_CARD, Harness
from rules_model import PARIS, Answer, in_wallet_window, rrn_prefix, school_year_of

MODEL_EXAMPLES_CI = 20
MODEL_STEPS_CI = 30
MODEL_EXAMPLES = int(os.environ.get("HDFPAY_MODEL_EXAMPLES", MODEL_EXAMPLES_CI))
MODEL_STEPS = int(os.environ.get("HDFPAY_MODEL_STEPS", MODEL_STEPS_CI))

UTC = dt.timezone.utc
# The instants the clock moves between: both sides of each boundary the rules name, and both
# DST nights (the RRN's day is the Paris date, so 00:30 CET is the next day, 23:30 UTC).
INSTANTS = (
    SCHOOL_DAY,
    dt.datetime(2026, 6, 30, 21, 59, 59, tzinfo=UTC),    # 30 June 23:59:59 CEST: year 2025, closed
    dt.datetime(2026, 6, 30, 22, 0, 0, tzinfo=UTC),      # 1 July 2026 00:00 CEST: opens
    dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC),        # 25 Oct 02:30 CEST, before falling back
    dt.datetime(2026, 10, 25, 1, 30, tzinfo=UTC),        # 25 Oct 02:30 CET, after
    dt.datetime(2026, 12, 31, 23, 30, tzinfo=UTC),       # 1 January 00:30 Paris: a new RRN year
    dt.datetime(2027, 3, 27, 22, 59, 59, tzinfo=UTC),    # 27 March 23:59:59 CET
    dt.datetime(2027, 3, 28, 1, 0, 0, tzinfo=UTC),       # 28 March 03:00 CEST, after springing
    dt.datetime(2027, 4, 30, 21, 59, 59, tzinfo=UTC),    # 30 April 23:59:59 CEST: still open
    dt.datetime(2027, 4, 30, 22, 0, 0, tzinfo=UTC),      # 1 May 2027 00:00: the wallet closes
    dt.datetime(2027, 6, 19, 21, 59, 59, tzinfo=UTC),    # renewal for 2027 not open yet
    dt.datetime(2027, 6, 19, 22, 0, 0, tzinfo=UTC),      # 20 June 00:00: renewal for 2027 opens
    dt.datetime(2027, 6, 30, 21, 59, 59, tzinfo=UTC),    # last second of school year 2026
    dt.datetime(2027, 6, 30, 22, 0, 0, tzinfo=UTC),      # 1 July 2027 00:00: year 2027 opens
    dt.datetime(2027, 10, 31, 0, 30, tzinfo=UTC),        # 31 Oct 02:30 CEST, before falling back
    dt.datetime(2027, 10, 31, 1, 30, tzinfo=UTC),        # 31 Oct 02:30 CET, after
)
SCHOOL_YEARS = (2026, 2027)
# Amounts: ordinary ones, and both sides of the per-purchase ceiling (300 € in the seed).
AMOUNTS_CENTS = st.one_of(st.integers(1, 60_00), st.sampled_from([299_99, 300_00, 300_01]))
RELOAD_CENTS = st.integers(1, 200_00)
REFUND_CENTS = st.one_of(st.none(), st.integers(1, 60_00))     # None: what is left of the sale
CARD_CHOICES = 64          # an index into the cards in play, taken modulo their number


def _answer(response) -> Answer:
    return Answer(response.rc, response.requested_cents, response.approved_cents,
                  response.balance_cents, response.refundable_cents, response.detail)


class RulesMachine(RuleBasedStateMachine):
    """Each example starts on a fresh copy of the seeded region; the model is read from it."""

    harness: Harness   # set by the test that runs the machine
    sales = Bundle("sales")
    unseen = Bundle("unseen")       # (terminal, request id) voided before the server saw them

    def __init__(self) -> None:
        super().__init__()
        self.h = type(self).harness
        self.h.new_example()
        self.model = self.h.load_model(SCHOOL_DAY)
        self.first_answers: dict[str, tuple] = {}     # request id → (request, its first answer)

    def _uid(self, choice: int) -> bytes:
        uids = [*self.model.cards, UNKNOWN_CARD]
        return uids[choice % len(uids)]

    def _check_answer(self, response, expected: Answer) -> None:
        self.last = response        # what a kept sequence may look at
        assert _answer(response) == expected, f"server {_answer(response)} != model {expected}"
        assert response.rrn and response.rrn.startswith(rrn_prefix(self.model.now)), response.rrn

    def _sell(self, terminal: str, uid: bytes, amount_cents: int, partial_ok: bool) -> str:
        request = self.h.terminals[terminal].purchase_request(uid, amount_cents,
                                                              partial_ok=partial_ok)
        response = self.h.send(terminal, request)
        expected = self.model.purchase(request.request_id, terminal, uid, amount_cents, partial_ok)
        self._check_answer(response, expected)
        self.model.sales[request.request_id].rrn = response.rrn
        self.first_answers[request.request_id] = (request, response)
        return request.request_id

    @rule(target=sales, terminal=st.sampled_from(TERMINALS), card=st.integers(0, CARD_CHOICES),
          amount_cents=AMOUNTS_CENTS, partial_ok=st.booleans())
    def purchase(self, terminal, card, amount_cents, partial_ok):
        """Any card in play, the unknown one included."""
        return self._sell(terminal, self._uid(card), amount_cents, partial_ok)

    @rule(target=sales, terminal=st.sampled_from(TERMINALS), card=st.integers(0, CARD_CHOICES),
          amount_cents=AMOUNTS_CENTS, partial_ok=st.booleans())
    def purchase_with_an_active_card(self, terminal, card, amount_cents, partial_ok):
        """What most taps are: a card not opposed (so that sales get approved)."""
        active = [uid for uid, c in self.model.cards.items() if c.status == "ACTIVE"]
        uid = active[card % len(active)] if active else self._uid(card)
        return self._sell(terminal, uid, amount_cents, partial_ok)

    def _reverse(self, sale: str, terminal: str) -> None:
        response = self.h.send(terminal, self.h.terminals[terminal].reversal_request(sale))
        self._check_answer(response, self.model.reversal(terminal, sale))

    @rule(sale=sales, terminal=st.sampled_from(TERMINALS))
    def reversal(self, sale, terminal):
        """From either terminal: another terminal's sale is not found (25)."""
        self._reverse(sale, terminal)

    @rule(sale=sales)
    def reversal_at_its_terminal(self, sale):
        self._reverse(sale, self.model.sales[sale].terminal)

    @rule(target=unseen, terminal=st.sampled_from(TERMINALS))
    def reversal_of_unknown(self, terminal):
        """25, and the server remembers: the original, if it comes, is declined."""
        request_id = uuid.uuid4().hex
        response = self.h.send(terminal, self.h.terminals[terminal].reversal_request(request_id))
        self._check_answer(response, Answer("25", 0, 0, None))
        return (terminal, request_id)

    @rule(voided=unseen, card=st.integers(0, CARD_CHOICES), amount_cents=AMOUNTS_CENTS)
    def late_original(self, voided, card, amount_cents):
        """The purchase a reversal overtook: 94, nothing debited (and no RRN: not recorded)."""
        terminal, request_id = voided
        request = self.h.terminals[terminal].purchase_request(self._uid(card), amount_cents,
                                                              request_id=request_id)
        response = self.h.send(terminal, request)
        assert (_answer(response), response.rrn) == (Answer("94", amount_cents, 0, None), None)

    @rule(sale=sales)
    def retry(self, sale):
        """The same request again (new KSN and MAC): the same answer, no money moved twice."""
        request, first = self.first_answers[sale]
        terminal = self.model.sales[sale].terminal
        assert self.h.send(terminal, request) == first

    def _refund(self, sale: str, terminal: str, uid: bytes, amount_cents: int | None) -> None:
        """amount None: exactly what is left of the sale (at least a cent)."""
        original = self.model.sales[sale]
        if amount_cents is None:
            amount_cents = max(original.left_cents, 1)
        request = self.h.terminals[terminal].refund_request(original.rrn, amount_cents, uid)
        response = self.h.send(terminal, request)
        self._check_answer(response, self.model.refund(terminal, sale, uid, amount_cents))

    @rule(sale=sales, terminal=st.sampled_from(TERMINALS), card=st.integers(0, CARD_CHOICES),
          amount_cents=REFUND_CENTS)
    def refund(self, sale, terminal, card, amount_cents):
        """Any terminal, any card: 25 at another partner or for another student, 14 unknown."""
        self._refund(sale, terminal, self._uid(card), amount_cents)

    @rule(sale=sales, card=st.integers(0, CARD_CHOICES), amount_cents=REFUND_CENTS)
    def refund_to_its_student(self, sale, card, amount_cents):
        """At the terminal that sold, to a card of the student who paid (a replaced one too)."""
        original = self.model.sales[sale]
        theirs = [uid for uid, c in self.model.cards.items() if c.student == original.student]
        uid = theirs[card % len(theirs)] if theirs else self._uid(card)
        self._refund(sale, original.terminal, uid, amount_cents)

    @rule(student=st.sampled_from(STUDENTS), school_year=st.sampled_from(SCHOOL_YEARS),
          amount_cents=RELOAD_CENTS)
    def reload(self, student, school_year, amount_cents):
        got = self.h.reload(student, school_year, amount_cents, f"model-{uuid.uuid4().hex}")
        assert got == self.model.reload(student, school_year, amount_cents)

    @rule(school_year=st.sampled_from(SCHOOL_YEARS))
    def expire(self, school_year):
        assert self.h.expire(school_year) == self.model.expire(school_year)

    @rule(card=st.integers(0, CARD_CHOICES), reason=st.sampled_from(OPPOSITION_REASONS))
    def oppose(self, card, reason):
        uid = self._uid(card)
        if uid == UNKNOWN_CARD:
            return
        assert self.h.oppose(uid, reason) == self.model.oppose(uid, reason)

    @rule(card=st.integers(0, CARD_CHOICES),
          reason=st.one_of(st.none(), st.sampled_from(OPPOSITION_REASONS)))
    def replace(self, card, reason):
        uid = self._uid(card)
        if uid == UNKNOWN_CARD:
            return
        new_uid, got = self.h.replace(uid, reason)
        assert got == self.model.replace(uid, reason, new_uid)

    @rule(student=st.sampled_from(STUDENTS), school_year=st.sampled_from(SCHOOL_YEARS))
    def renew(self, student, school_year):
        assert self.h.renew(student, school_year) == self.model.renew(student, school_year)

    @rule(at=st.sampled_from(INSTANTS))
    def move_clock(self, at):
        self.h.pin(at)
        self.model.now = at

    @invariant()
    def ledger_agrees(self):
        balances, statuses, violations = self.h.ledger_state()
        assert balances == self.model.balances
        assert statuses == {uid: card.status for uid, card in self.model.cards.items()}
        assert violations == []


def run_machine(harness: Harness, examples: int, steps: int) -> None:
    RulesMachine.harness = harness
    run_state_machine_as_test(RulesMachine, settings=hypothesis_settings(
        max_examples=examples, stateful_step_count=steps, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))


@pytest.fixture
def harness(settings, pg_cluster, template_database, hsm, keys_for):
    with Harness(settings, pg_cluster, template_database, hsm, keys_for) as running:
        yield running


def test_the_server_follows_the_model_of_the_rules(harness):
    started = time.monotonic()
    run_machine(harness, MODEL_EXAMPLES, MODEL_STEPS)
    print(f"model: {MODEL_EXAMPLES} examples × up to {MODEL_STEPS} steps, {harness.examples} examples and "
          f"{harness.steps} steps run on the server in {time.monotonic() - started:.1f} s; answers "
          f"{sorted(harness.outcomes.items())}")


def replay(harness: Harness) -> RulesMachine:
    """A fresh machine for a kept sequence, as hypothesis prints it (state.rule(...))."""
    RulesMachine.harness = harness
    return RulesMachine()


def test_paris_instants_are_what_their_comments_say():
    """The clock's instants, read in Paris: a wrong one would test another night."""
    assert [at.astimezone(PARIS).strftime("%Y-%m-%d %H:%M:%S %Z") for at in INSTANTS] == [
        "2026-11-26 10:00:00 CET",
        "2026-06-30 23:59:59 CEST", "2026-07-01 00:00:00 CEST",
        "2026-10-25 02:30:00 CEST", "2026-10-25 02:30:00 CET",
        "2027-01-01 00:30:00 CET",
        "2027-03-27 23:59:59 CET", "2027-03-28 03:00:00 CEST",
        "2027-04-30 23:59:59 CEST", "2027-05-01 00:00:00 CEST",
        "2027-06-19 23:59:59 CEST", "2027-06-20 00:00:00 CEST",
        "2027-06-30 23:59:59 CEST", "2027-07-01 00:00:00 CEST",
        "2027-10-31 02:30:00 CEST", "2027-10-31 02:30:00 CET"]


async def test_the_models_calendar_is_the_ledgers(conn):
    """At every instant the clock visits: the same school year, window and RRN day."""
    for at in INSTANTS:
        row = await conn.fetchrow(
            "SELECT school_year_of($1) AS year, in_wallet_window($1) AS open,"
            " right(to_char($1 AT TIME ZONE business_time_zone(), 'YYYY'), 1)"
            " || to_char($1 AT TIME ZONE business_time_zone(), 'DDD') AS rrn_prefix", at)
        assert (row["year"], row["open"], row["rrn_prefix"]) == (
            school_year_of(at), in_wallet_window(at), rrn_prefix(at)), at


# --- kept sequences ------------------------------------------------------------------------------
# Each replays steps as hypothesis prints them (state.rule(...)), on a fresh seeded database, with
# every answer and the ledger compared with the model as in the random run. Card indexes are into
# the cards in play in seed order: 0 → student 201, 1 → 202, 2 → 203, 3 → 250 (no rights this
# year), 4 → 292 (card lost), then new cards, then the unknown card.


def test_kept_partial_refund_then_void_leaves_nothing_voided(harness):
    state = replay(harness)
    sale = state.purchase_with_an_active_card(terminal=TERMINALS[0], card=0, amount_cents=150_00,
                                              partial_ok=True)         # 10: the whole 100 €
    state.refund_to_its_student(sale=sale, card=0, amount_cents=30_00)
    state.reversal_at_its_terminal(sale=sale)                            # the 70 € left
    state.refund_to_its_student(sale=sale, card=0, amount_cents=None)     # 13, detail voided
    assert (state.last.rc, state.last.refundable_cents, state.last.detail) == ("13", 0, "voided")
    state.ledger_agrees()
    state.teardown()


def test_kept_replacement_fee_pending_outside_the_window_recovered_by_the_next_reload(harness):
    state = replay(harness)
    state.move_clock(at=INSTANTS[9])                  # 1 May 2027 00:00: the wallet has closed
    state.replace(card=0, reason="LOST")              # 5 € pending
    state.reload(student=201, school_year=2027, amount_cents=3_00)        # recovers 3 €
    state.reload(student=201, school_year=2027, amount_cents=10_00)       # the last 2 €
    assert state.model.pending_fees[201] == 0 and state.model.balances[(201, 2027)] == 8_00
    state.ledger_agrees()
    state.teardown()


def test_kept_void_after_1_may_goes_to_expired_funds(harness):
    state = replay(harness)
    state.move_clock(at=INSTANTS[8])                  # 30 April 23:59:59
    sale = state.purchase(terminal=TERMINALS[1], card=1, amount_cents=20_00, partial_ok=False)
    state.move_clock(at=INSTANTS[9])                  # one second later, 1 May 00:00
    state.reversal_at_its_terminal(sale=sale)         # restored, but not to the closed wallet
    assert (state.last.rc, state.last.approved_cents, state.last.balance_cents) == ("00", 20_00, None)
    state.refund_to_its_student(sale=sale, card=1, amount_cents=None)    # 54
    assert state.last.rc == "54"
    state.ledger_agrees()
    state.teardown()


def test_kept_renewal_opens_on_20_june_and_the_new_year_starts_on_1_july(harness):
    state = replay(harness)
    state.move_clock(at=INSTANTS[10])                 # 19 June 23:59:59: not open yet
    state.renew(student=202, school_year=2027)
    state.move_clock(at=INSTANTS[11])                 # 20 June 00:00
    state.renew(student=202, school_year=2027)
    state.reload(student=202, school_year=2027, amount_cents=50_00)
    state.move_clock(at=INSTANTS[12])                 # 30 June 23:59:59: still 54
    state.purchase(terminal=TERMINALS[0], card=1, amount_cents=10_00, partial_ok=False)
    state.move_clock(at=INSTANTS[13])                 # 1 July 2027 00:00: the new wallet
    state.purchase(terminal=TERMINALS[0], card=1, amount_cents=10_00, partial_ok=False)
    assert (state.last.rc, state.last.balance_cents) == ("00", 40_00)
    state.purchase(terminal=TERMINALS[0], card=0, amount_cents=10_00, partial_ok=False)  # 57
    assert state.last.rc == "57"
    state.ledger_agrees()
    state.teardown()
