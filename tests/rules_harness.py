"""The real side of the model-based tests: the real server on a fresh copy of the seeded test
database for each example, two signing terminals and an operator's connection, on an event loop
in a background thread.

A fresh database per example (not one carried over from the previous example) makes an example
replay the same way, which hypothesis needs to shrink a failure to its shortest sequence.
Hypothesis's stateful runner is synchronous; each step hands a coroutine to this loop and waits
for it with a bound (STEP_TIMEOUT_S), so a hang fails the step instead of the run."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import threading

import itertools
import os

import asyncpg

from hdfpay.server import running_server
from ledger import cards as ledger_cards
from ledger.clock import pin_clock
from ledger.expiry import ExpiryRefused, expire_school_year
from ledger.demo_region import card_uid, terminal_id
from ledger.invariants import ledger_violations
from ledger.reload import ReloadRefused, reload_wallet
from ledger.rights_renewal import RenewalRefused, renew_one
from terminal_protocol.client import TerminalClient

from rules_model import Card, Rules, RulesModel

STEP_TIMEOUT_S = 30            # one step: a message, or one back-office call and a few reads
EXAMPLE_SETUP_TIMEOUT_S = 60   # a database copied from the template and a server started on it
LOOP_STOP_TIMEOUT_S = 10
ACTOR = "model-test"

# Students in play, by demo number: ordinary ones, one without rights this year (57) and one
# whose card the seed declared lost (41). Numbers well past those the other tests use.
STUDENTS = (201, 202, 203, 250, 292)
UNKNOWN_CARD = card_uid(999_999)             # no such card: 14
# Two partners: a refund is found only at the partner that sold (25 elsewhere).
TERMINALS = (terminal_id(1, 1), terminal_id(2, 1))
# New cards' UIDs: a manufacturer byte the seed never uses, then the new card's row number.
NEW_UID_PREFIX = b"\x08"


def dossier(student: int) -> str:
    return f"HDF{student:07d}"


class Harness:
    """Owns the loop thread, the server, the terminals and one operator connection."""

    def __init__(self, settings, cluster, template: str, hsm, keys_for) -> None:
        self._settings, self._cluster, self._template = settings, cluster, template
        self._hsm, self._keys_for = hsm, keys_for
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="model-loop",
                                        daemon=True)
        self._stack = contextlib.AsyncExitStack()
        self._names = (f"model_{os.getpid()}_{n}" for n in itertools.count(1))
        self.examples = 0
        self.terminals: dict[str, TerminalClient] = {}
        self.conn: asyncpg.Connection | None = None
        self.steps = 0
        self.outcomes: collections.Counter = collections.Counter()   # (what, rc or result)

    def __enter__(self) -> "Harness":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._submit(self._stack.aclose(), EXAMPLE_SETUP_TIMEOUT_S)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(LOOP_STOP_TIMEOUT_S)
            self._loop.close()

    def new_example(self) -> None:
        """Close the previous example's server and database; open a fresh copy and a server."""
        self.examples += 1
        self._submit(self._open(next(self._names)), EXAMPLE_SETUP_TIMEOUT_S)

    async def _open(self, database: str) -> None:
        await self._stack.aclose()
        self._stack = contextlib.AsyncExitStack()
        admin = await asyncpg.connect(self._cluster.dsn_for("postgres"))
        try:
            await admin.execute(f"CREATE DATABASE {database} TEMPLATE {self._template}"
                                " STRATEGY WAL_LOG")
        finally:
            await admin.close()
        self._stack.push_async_callback(self._drop, database)
        dsn = self._cluster.dsn_for(database)
        server = await self._stack.enter_async_context(
            running_server(self._settings, dsn, self._hsm))
        for name in TERMINALS:
            self.terminals[name] = await self._stack.enter_async_context(
                TerminalClient(server.url, name, self._keys_for(name)))
        self.conn = await asyncpg.connect(dsn)
        self._stack.push_async_callback(self.conn.close)

    async def _drop(self, database: str) -> None:
        admin = await asyncpg.connect(self._cluster.dsn_for("postgres"))
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        finally:
            await admin.close()

    def _submit(self, coroutine, timeout_s: float):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=timeout_s)

    def run(self, coroutine):
        return self._submit(coroutine, STEP_TIMEOUT_S)

    # --- the model's starting point, read from the ledger ------------------------------------

    def load_model(self, now: dt.datetime) -> RulesModel:
        """Pin the clock, then read what the model needs of the students in play from the
        seeded region (the model assumes nothing the seed might change)."""
        return self.run(self._load_model(now))

    async def _load_model(self, now: dt.datetime) -> RulesModel:
        conn = self.conn
        await pin_clock(conn, now)
        rules = await conn.fetchrow("SELECT * FROM rules")
        dossiers = [dossier(s) for s in STUDENTS]
        cards = {r["uid"]: Card(r["student"], r["status"], r["replaced"]) for r in await conn.fetch(
            "SELECT c.uid, substr(b.dossier_number, 4)::integer AS student, c.status,"
            " EXISTS (SELECT 1 FROM card_replacements r WHERE r.old_card_id = c.id) AS replaced"
            " FROM cards c JOIN beneficiaries b ON b.id = c.beneficiary_id"
            " WHERE b.dossier_number = ANY($1) ORDER BY c.id", dossiers)}
        rights = {(r["student"], r["school_year"]) for r in await conn.fetch(
            "SELECT substr(b.dossier_number, 4)::integer AS student, r.school_year FROM rights r"
            " JOIN beneficiaries b ON b.id = r.beneficiary_id WHERE b.dossier_number = ANY($1)",
            dossiers)}
        pending = {r["student"]: r["open"] for r in await conn.fetch(
            "SELECT substr(b.dossier_number, 4)::integer AS student,"
            " sum(p.amount_cents - p.recovered_cents)::bigint AS open FROM pending_fees p"
            " JOIN beneficiaries b ON b.id = p.beneficiary_id WHERE b.dossier_number = ANY($1)"
            " GROUP BY 1", dossiers)}
        partners = {r["id"]: r["partner_id"] for r in await conn.fetch(
            "SELECT id, partner_id FROM terminals WHERE id = ANY($1)", list(TERMINALS))}
        return RulesModel(
            rules=Rules(rules["max_purchase_amount_cents"], rules["replacement_fee_cents"],
                        rules["rights_renewal_opens_month"], rules["rights_renewal_opens_day"]),
            now=now, partner_of_terminal=partners, cards=cards, rights=rights,
            balances=await self._balances(), pending_fees=pending)

    async def _balances(self) -> dict[tuple[int, int], int]:
        return {(r["student"], r["school_year"]): r["balance"] for r in await self.conn.fetch(
            "SELECT substr(b.dossier_number, 4)::integer AS student, w.school_year,"
            " a.credits_posted - a.debits_posted AS balance FROM wallets w"
            " JOIN beneficiaries b ON b.id = w.beneficiary_id JOIN accounts a ON a.id = w.account_id"
            " WHERE b.dossier_number = ANY($1)", [dossier(s) for s in STUDENTS])}

    def ledger_state(self) -> tuple[dict, dict, list]:
        """The wallets' balances, the cards' statuses and the ledger's violations."""
        async def read():
            statuses = {r["uid"]: r["status"] for r in await self.conn.fetch(
                "SELECT c.uid, c.status FROM cards c JOIN beneficiaries b ON b.id = c.beneficiary_id"
                " WHERE b.dossier_number = ANY($1)", [dossier(s) for s in STUDENTS])}
            return await self._balances(), statuses, await ledger_violations(self.conn)
        return self.run(read())

    # --- the real operations -------------------------------------------------------------------

    def send(self, terminal: str, request):
        self.steps += 1
        response = self.run(self.terminals[terminal].send(request))
        self.outcomes[(type(request).__name__.lower(), response.rc)] += 1
        return response

    def pin(self, at: dt.datetime) -> None:
        self.steps += 1
        self.run(pin_clock(self.conn, at))

    def reload(self, student: int, school_year: int, amount_cents: int, reference: str):
        self.steps += 1

        async def call():
            try:
                r = await reload_wallet(self.conn, dossier(student), school_year, amount_cents,
                                        reference)
            except ReloadRefused:
                return "ReloadRefused"
            return (r.credited_cents, r.fee_recovered_cents, r.balance_cents)
        return self.run(call())

    def expire(self, school_year: int) -> str:
        """The 1 May job, for the whole region (the model looks only at the students in play)."""
        self.steps += 1

        async def call():
            try:
                await expire_school_year(self.conn, school_year, actor=ACTOR)
            except ExpiryRefused:
                return "ExpiryRefused"
            return "ok"
        return self.run(call())

    def oppose(self, uid: bytes, reason: str) -> str:
        self.steps += 1

        async def call():
            try:
                await ledger_cards.oppose_card(self.conn, await self._card_id(uid), reason,
                                               actor=ACTOR)
            except ledger_cards.Refused as refusal:
                return type(refusal).__name__
            return "ok"
        return self.run(call())

    def replace(self, uid: bytes, reason: str | None) -> tuple[bytes, tuple | str]:
        """The new card's UID and the fee (fee, taken, pending), or the refusal's kind."""
        self.steps += 1

        async def call():
            number = await self.conn.fetchval("SELECT coalesce(max(id), 0) + 1 FROM cards")
            new_uid = NEW_UID_PREFIX + number.to_bytes(6, "big")
            try:
                r = await ledger_cards.replace_card(self.conn, await self._card_id(uid), new_uid,
                                                    actor=ACTOR, reason=reason)
            except ledger_cards.Refused as refusal:
                return new_uid, type(refusal).__name__
            return new_uid, (r.fee_cents, r.fee_taken_cents, r.fee_pending_cents)
        return self.run(call())

    def renew(self, student: int, school_year: int) -> bool | str:
        self.steps += 1

        async def call():
            try:
                r = await renew_one(self.conn, dossier(student), school_year=school_year,
                                    actor=ACTOR)
            except RenewalRefused:
                return "RenewalRefused"
            return r.already_renewed
        return self.run(call())

    async def _card_id(self, uid: bytes) -> int:
        return await self.conn.fetchval("SELECT id FROM cards WHERE uid = $1", uid)
