"""The students' mail: queued in the ledger's outbox with what it announces, sent through a real
SMTP server (aiosmtpd, in this process) and read back as it arrived; retried when the server is
away, each message delivered once by two senders together, its body erased once sent, and no
address or body in the logs."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging

import asyncpg
import pytest

from conftest import SCHOOL_DAY
from ledger import mail_outbox
from ledger.clock import pin_clock
from ledger.database import create_ops_pool
from ledger.mail_outbox import (MAIL_BODY_MAX_CHARS, MAIL_FIRST_RETRY_MS, MAIL_KEEP_SENT_DAYS,
                                MAIL_KIND_MAX_CHARS, MAIL_LAST_ERROR_MAX_CHARS, MAIL_MAX_RETRY_MS,
                                MAIL_RECIPIENT_MAX_CHARS, MAIL_SUBJECT_MAX_CHARS, enqueue, mail_state)
from portal.mail_sender import MailSender, SmtpConfigError, SmtpSettings

from mail_fixtures import SENDER, WAIT_BOUND_S

TEST_POLL_INTERVAL_S = 0.05  # the senders' idle wait in these tests
RECIPIENT = "camille.lefebvre@eleves.example"
SUBJECT = "Votre espace Génération #HDF est créé"
BODY = ("Bonjour Camille,\n\nVotre identifiant : C.LEFEBVRE7\nMot de passe provisoire : "
        "çà-Été-42€\nÀ changer dès la première connexion.\n\n"
        "« Génération #HDF », Région Hauts-de-France\n")
SMTP_SERVER_LOGGER = "mail.log"   # aiosmtpd's own logger: the test server, not the product


@pytest.fixture
async def pool(dsn):
    created = await create_ops_pool(dsn, 4)
    yield created
    await created.close()


@pytest.fixture
async def clock(conn):
    await pin_clock(conn, SCHOOL_DAY)
    return SCHOOL_DAY


def sender(pool, settings, name="sender-a", **kwargs) -> MailSender:
    return MailSender(pool, settings, sender_id=name, poll_interval_s=TEST_POLL_INTERVAL_S, **kwargs)


async def test_a_queued_mail_arrives_once_with_its_subject_body_and_message_id(
        conn, clock, pool, smtp_settings, inbox):
    mail_id = await enqueue(conn, RECIPIENT, SUBJECT, BODY, "account_created")
    assert await sender(pool, smtp_settings).send_due() == 1
    await inbox.wait_for(1)
    mail_from, rcpt_tos, message = inbox.arrived[0]
    state = await mail_state(conn, mail_id)
    assert (mail_from, rcpt_tos) == (SENDER, [RECIPIENT])
    assert message["Subject"] == SUBJECT
    assert message["Message-ID"] == f"<{state.message_id}@generation.hdf.example>"
    assert message.get_content().replace("\r\n", "\n") == BODY       # CRLF on the wire
    assert message.get_content_charset() == "utf-8"
    assert state.sent_at == clock and state.attempts == 1
    assert await sender(pool, smtp_settings).send_due() == 0
    assert len(inbox.arrived) == 1


async def test_with_the_server_stopped_the_mail_is_postponed_then_delivered_once(
        conn, clock, pool, smtp, smtp_settings, inbox):
    await smtp.stop()
    mail_id = await enqueue(conn, RECIPIENT, SUBJECT, BODY, "password_reset")
    mailer = sender(pool, smtp_settings)
    assert await mailer.send_due() == 1
    state = await mail_state(conn, mail_id)
    assert state.sent_at is None and state.attempts == 1 and state.has_body
    assert state.next_attempt_at == clock + dt.timedelta(milliseconds=MAIL_FIRST_RETRY_MS)
    assert state.last_error.startswith("SMTPConnectError")

    await smtp.start()
    assert await mailer.send_due() == 0                  # not due before its retry time
    await pin_clock(conn, state.next_attempt_at - dt.timedelta(milliseconds=1))
    assert await mailer.send_due() == 0
    await pin_clock(conn, state.next_attempt_at)
    assert await mailer.send_due() == 1
    await inbox.wait_for(1)
    after = await mail_state(conn, mail_id)
    assert after.sent_at == state.next_attempt_at and after.attempts == 2 and not after.has_body
    assert inbox.arrived[0][2]["Message-ID"] == f"<{state.message_id}@generation.hdf.example>"
    assert await mailer.send_due() == 0
    assert len(inbox.arrived) == 1


async def test_the_retry_delay_doubles_up_to_its_cap_and_never_gives_up(conn, clock):
    mail_id = await enqueue(conn, RECIPIENT, SUBJECT, BODY, "account_created")
    now, delays = clock, []
    while len(delays) < 10:
        assert [m.id for m in await mail_outbox.claim_due(conn, "s", 1, 60_000)] == [mail_id]
        assert await mail_outbox.postpone(conn, mail_id, "s", "SMTPConnectError errno 111")
        due = (await mail_state(conn, mail_id)).next_attempt_at
        delays.append((due - now) // dt.timedelta(milliseconds=1))
        now = due
        await pin_clock(conn, now)
    assert delays == [min(MAIL_FIRST_RETRY_MS * 2 ** n, MAIL_MAX_RETRY_MS) for n in range(10)]
    assert delays[-1] == MAIL_MAX_RETRY_MS
    assert (await mail_state(conn, mail_id)).attempts == 10


async def test_two_senders_together_deliver_each_message_exactly_once(conn, clock, pool, smtp_settings,
                                                                    inbox):
    count = 24
    async with conn.transaction():
        ids = [await enqueue(conn, f"eleve{n}@lycee.example", f"Message {n}", f"Corps {n} é",
                             "account_created")
               for n in range(count)]
    senders = [sender(pool, smtp_settings, name, batch_rows=3) for name in ("sender-a", "sender-b")]
    tasks = [asyncio.create_task(s.run()) for s in senders]
    try:
        await inbox.wait_for(count)
    finally:
        for s in senders:
            s.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), WAIT_BOUND_S)
    expected = {f"<{(await mail_state(conn, i)).message_id}@generation.hdf.example>" for i in ids}
    arrived = [message["Message-ID"] for _, _, message in inbox.arrived]
    assert len(arrived) == count and set(arrived) == expected
    assert sorted(rcpt for _, (rcpt,), _ in inbox.arrived) == sorted(f"eleve{n}@lycee.example"
                                                                     for n in range(count))
    states = [await mail_state(conn, i) for i in ids]
    assert all(s.sent_at is not None and s.attempts == 1 for s in states)


async def test_a_claim_skips_the_rows_another_claim_is_taking_instead_of_waiting(conn, clock, dsn):
    ids = [await enqueue(conn, RECIPIENT, SUBJECT, BODY, "account_created") for _ in range(4)]
    other = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():          # the first claim's row locks are still held
            first = await mail_outbox.claim_due(conn, "sender-a", 2, 60_000)
            second = await asyncio.wait_for(mail_outbox.claim_due(other, "sender-b", 4, 60_000),
                                            WAIT_BOUND_S)
    finally:
        await other.close()
    assert sorted(m.id for m in first + second) == ids
    assert {m.id for m in first}.isdisjoint(m.id for m in second)


async def test_a_lease_keeps_a_message_from_a_second_sender_until_it_runs_out(conn, clock):
    mail_id = await enqueue(conn, RECIPIENT, SUBJECT, BODY, "account_created")
    assert [m.id for m in await mail_outbox.claim_due(conn, "sender-a", 5, 60_000)] == [mail_id]
    assert await mail_outbox.claim_due(conn, "sender-b", 5, 60_000) == []
    assert not await mail_outbox.postpone(conn, mail_id, "sender-b", "not mine")
    await pin_clock(conn, clock + dt.timedelta(minutes=1))
    assert [m.id for m in await mail_outbox.claim_due(conn, "sender-b", 5, 60_000)] == [mail_id]


async def test_a_rolled_back_transaction_sends_nothing(conn, clock, pool, smtp_settings, inbox):
    class AccountRefused(Exception):
        pass
    with pytest.raises(AccountRefused):
        async with conn.transaction():
            await enqueue(conn, RECIPIENT, SUBJECT, BODY, "account_created")
            raise AccountRefused
    assert await sender(pool, smtp_settings).send_due() == 0
    assert await conn.fetchval("SELECT count(*) FROM mail_outbox") == 0
    assert inbox.arrived == []


async def test_the_body_is_erased_when_sent_and_the_address_after_the_retention_days(
        conn, clock, pool, smtp_settings, inbox):
    sent_id = await enqueue(conn, RECIPIENT, SUBJECT, BODY, "account_created")
    await sender(pool, smtp_settings).send_due()
    waiting_id = await enqueue(conn, "autre@eleves.example", SUBJECT, BODY, "password_reset")
    sent = await mail_state(conn, sent_id)
    assert not sent.has_body and sent.has_recipient
    assert await conn.fetchval("SELECT body FROM mail_outbox WHERE id = $1", sent_id) is None

    await pin_clock(conn, clock + dt.timedelta(days=MAIL_KEEP_SENT_DAYS) - dt.timedelta(seconds=1))
    assert await mail_outbox.purge_sent(conn) == 0
    await pin_clock(conn, clock + dt.timedelta(days=MAIL_KEEP_SENT_DAYS, seconds=1))
    assert await mail_outbox.purge_sent(conn) == 1
    purged, waiting = await mail_state(conn, sent_id), await mail_state(conn, waiting_id)
    assert not purged.has_recipient and purged.sent_at == clock and purged.kind == "account_created"
    assert waiting.has_body and waiting.has_recipient      # not sent yet: kept to be delivered


async def test_no_address_or_body_in_the_logs(conn, clock, pool, smtp, smtp_settings, inbox, caplog):
    caplog.set_level(logging.DEBUG)
    mailer = sender(pool, smtp_settings)
    await smtp.stop()
    mail_id = await enqueue(conn, RECIPIENT, SUBJECT, BODY, "account_created")
    await mailer.send_due()
    await smtp.start()
    await pin_clock(conn, (await mail_state(conn, mail_id)).next_attempt_at)
    await mailer.send_due()
    await inbox.wait_for(1)
    ours = [r for r in caplog.records if not r.name.startswith(SMTP_SERVER_LOGGER)]
    assert {r.getMessage() for r in ours} >= {"mail postponed", "mail sent"}
    for record in ours:
        seen = record.getMessage() + repr(record.__dict__)
        assert "camille" not in seen.lower() and "Mot de passe" not in seen and "çà-Été" not in seen


async def test_an_error_naming_the_recipient_is_withheld_and_errors_are_bounded(conn, clock):
    first = await enqueue(conn, RECIPIENT, SUBJECT, BODY, "account_created")
    second = await enqueue(conn, "autre@eleves.example", SUBJECT, BODY, "account_created")
    await mail_outbox.claim_due(conn, "s", 5, 60_000)
    await mail_outbox.postpone(conn, first, "s", f"550 <{RECIPIENT.upper()}> unknown user")
    await mail_outbox.postpone(conn, second, "s", "x" * (MAIL_LAST_ERROR_MAX_CHARS * 2))
    assert (await mail_state(conn, first)).last_error == mail_outbox.ERROR_WITHHELD
    assert (await mail_state(conn, second)).last_error == "x" * MAIL_LAST_ERROR_MAX_CHARS


@pytest.mark.parametrize("column, longest, good", [
    ("recipient", MAIL_RECIPIENT_MAX_CHARS, lambda n: "a" * (n - len("@lycee.fr")) + "@lycee.fr"),
    ("subject", MAIL_SUBJECT_MAX_CHARS, lambda n: "é" * n),
    ("body", MAIL_BODY_MAX_CHARS, lambda n: "é" * n),
    ("kind", MAIL_KIND_MAX_CHARS, lambda n: "k" * n),
])
async def test_the_named_bounds_are_the_tables(conn, clock, column, longest, good):
    values = {"recipient": RECIPIENT, "subject": SUBJECT, "body": BODY, "kind": "account_created"}
    at_bound = good(longest)
    assert len(at_bound) == longest
    await enqueue(conn, **{**values, column: at_bound})
    too_long = at_bound + at_bound[-1]
    with pytest.raises(ValueError):
        await enqueue(conn, **{**values, column: too_long})
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute(
            "INSERT INTO mail_outbox (kind, recipient, subject, body, created_at, next_attempt_at)"
            " VALUES ($1, $2, $3, $4, business_now(), business_now())",
            *[{**values, column: too_long}[c] for c in ("kind", "recipient", "subject", "body")])


async def test_a_subject_on_two_lines_is_refused(conn, clock):
    with pytest.raises(ValueError):
        await enqueue(conn, RECIPIENT, "Bonjour\r\nBcc: x@y.example", BODY, "account_created")
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute(
            "INSERT INTO mail_outbox (kind, recipient, subject, body, created_at, next_attempt_at)"
            " VALUES ('k', $1, $2, 'b', business_now(), business_now())", RECIPIENT, "a\nBcc: b")


SMTP_ENV = {"HDFPAY_SMTP_HOST": "smtp.example.org", "HDFPAY_SMTP_SENDER": SENDER}


def test_smtp_settings_from_the_environment():
    settings = SmtpSettings.from_env({**SMTP_ENV, "HDFPAY_SMTP_USERNAME": "hdfpay",
                                      "HDFPAY_SMTP_PASSWORD": "s3cret"})
    assert (settings.host, settings.port, settings.tls, settings.username) == (
        "smtp.example.org", 587, "starttls", "hdfpay")
    assert "s3cret" not in repr(settings)
    assert SmtpSettings.from_env({**SMTP_ENV, "HDFPAY_SMTP_TLS": "tls"}).port == 465
    plain = SmtpSettings.from_env({**SMTP_ENV, "HDFPAY_SMTP_TLS": "none", "HDFPAY_SMTP_PORT": "2525"})
    assert plain.port == 2525
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 25


@pytest.mark.parametrize("environ, named", [
    ({"HDFPAY_SMTP_SENDER": SENDER}, "HDFPAY_SMTP_HOST"),
    ({"HDFPAY_SMTP_HOST": "smtp.example.org"}, "HDFPAY_SMTP_SENDER"),
    ({**SMTP_ENV, "HDFPAY_SMTP_SENDER": "no-reply"}, "HDFPAY_SMTP_SENDER"),
    ({**SMTP_ENV, "HDFPAY_SMTP_PORT": "smtp"}, "HDFPAY_SMTP_PORT"),
    ({**SMTP_ENV, "HDFPAY_SMTP_PORT": "70000"}, "HDFPAY_SMTP_PORT"),
    ({**SMTP_ENV, "HDFPAY_SMTP_TLS": "ssl3"}, "HDFPAY_SMTP_TLS"),
    ({**SMTP_ENV, "HDFPAY_SMTP_USERNAME": "hdfpay"}, "HDFPAY_SMTP_PASSWORD"),
    ({**SMTP_ENV, "HDFPAY_SMTP_TLS": "none", "HDFPAY_SMTP_USERNAME": "u", "HDFPAY_SMTP_PASSWORD": "p"},
     "HDFPAY_SMTP_TLS"),
])
def test_an_unusable_smtp_setting_is_named(environ, named):
    with pytest.raises(SmtpConfigError, match=named):
        SmtpSettings.from_env(environ)
