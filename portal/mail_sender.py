"""Sends the students' mail from the durable outbox (ledger/mail_outbox.py) through SMTP.

`MailSender.run()` loops: claim the due messages (leased to this sender), send each with
aiosmtplib to the configured server, mark it sent (the ledger erases its body) or postpone it
(exponential backoff, never given up), then wait a short interval or until `wake()`.

Delivery is at least once, with a deduplicable id. A message is marked sent only after the SMTP
server accepted it, so a crash, a lost connection or a timeout after the server's acceptance and
before the database update leaves it unsent: it is sent again once its lease runs out (or when
postponed, at its retry time). That window is the only way a message goes twice, and both copies
carry the same Message-ID header (<message_id@sender's domain>, from the row, also the same Date:
its created_at), so a mail system or a reader can tell them apart as one. Nothing is sent twice
otherwise: two senders never hold the same message (the ledger's lease), and a lease outlasts a
whole batch (`lease_ms`).

Logs name a message by its id and kind, never its address, subject or body; errors are kept as
an exception class and SMTP codes only (server replies can echo the address).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import socket
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Mapping

import aiosmtplib
import asyncpg

from ledger import mail_outbox
from ledger.mail_outbox import OutgoingMail

log = logging.getLogger(__name__)

TLS_MODES = ("none", "starttls", "tls")
DEFAULT_PORT_BY_TLS_MODE = {"none": 25, "starttls": 587, "tls": 465}
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
# Whole time one message may take (connect, TLS, login, envelope, data).
MAIL_SMTP_TIMEOUT_S = 30.0
MAIL_SMTP_TIMEOUT_MAX_S = 300.0
# Every database call of the sender (claim, mark, postpone).
MAIL_DB_TIMEOUT_S = 10.0
# Messages claimed at once, and the lease's margin beyond their worst-case sending time.
MAIL_SEND_BATCH_ROWS = 10
MAIL_LEASE_MARGIN_MS = 60_000
# How often an idle sender looks for due mail (sooner when woken).
MAIL_POLL_INTERVAL_S = 5.0


class SmtpConfigError(ValueError):
    """An SMTP setting is missing or unusable; the message names the variable."""


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    tls: str                     # one of TLS_MODES: plain, STARTTLS upgrade, or TLS from the start
    sender: str                  # the From address; its domain ends every Message-ID
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_s: float = MAIL_SMTP_TIMEOUT_S

    def __post_init__(self) -> None:
        if not self.host:
            raise SmtpConfigError("the SMTP host is empty")
        if self.tls not in TLS_MODES:
            raise SmtpConfigError(f"the SMTP TLS mode must be one of {', '.join(TLS_MODES)}")
        if not 1 <= self.port <= 65535:
            raise SmtpConfigError("the SMTP port must be between 1 and 65535")
        if not mail_outbox.RECIPIENT_PATTERN.fullmatch(self.sender):
            raise SmtpConfigError("the sender must be one e-mail address (name@domain)")
        if (self.username is None) != (self.password is None):
            raise SmtpConfigError("set both the SMTP username and password, or neither")
        if self.username is not None and self.tls == "none" and self.host not in LOOPBACK_HOSTS:
            raise SmtpConfigError("an SMTP password is sent only over TLS (starttls or tls) "
                                  "or to a loopback host")
        if not 0 < self.timeout_s <= MAIL_SMTP_TIMEOUT_MAX_S:
            raise SmtpConfigError(f"the SMTP timeout must be above 0 and at most "
                                  f"{MAIL_SMTP_TIMEOUT_MAX_S} s")

    @property
    def sender_domain(self) -> str:
        return self.sender.rpartition("@")[2]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "SmtpSettings":
        """HDFPAY_SMTP_HOST and HDFPAY_SMTP_SENDER are required; HDFPAY_SMTP_TLS defaults to
        starttls, HDFPAY_SMTP_PORT to the mode's usual port (25, 587, 465);
        HDFPAY_SMTP_USERNAME and HDFPAY_SMTP_PASSWORD go together."""
        def value(name: str) -> str | None:
            return (environ.get(name) or "").strip() or None

        host = value("HDFPAY_SMTP_HOST")
        if host is None:
            raise SmtpConfigError("HDFPAY_SMTP_HOST is not set: the SMTP server's host name")
        sender = value("HDFPAY_SMTP_SENDER")
        if sender is None:
            raise SmtpConfigError("HDFPAY_SMTP_SENDER is not set: the From address, e.g. "
                                  "no-reply@example.org")
        if not mail_outbox.RECIPIENT_PATTERN.fullmatch(sender):
            raise SmtpConfigError("HDFPAY_SMTP_SENDER must be one e-mail address (name@domain), "
                                  f"got {sender!r}")
        tls = (value("HDFPAY_SMTP_TLS") or "starttls").lower()
        if tls not in TLS_MODES:
            raise SmtpConfigError(f"HDFPAY_SMTP_TLS must be one of {', '.join(TLS_MODES)}, got {tls!r}")
        raw_port = value("HDFPAY_SMTP_PORT")
        port = DEFAULT_PORT_BY_TLS_MODE[tls]
        if raw_port is not None:
            try:
                port = int(raw_port)
            except ValueError:
                raise SmtpConfigError(f"HDFPAY_SMTP_PORT must be an integer, got {raw_port!r}") from None
            if not 1 <= port <= 65535:
                raise SmtpConfigError(f"HDFPAY_SMTP_PORT must be between 1 and 65535, got {port}")
        username, password = value("HDFPAY_SMTP_USERNAME"), environ.get("HDFPAY_SMTP_PASSWORD") or None
        if (username is None) != (password is None):
            raise SmtpConfigError("set both HDFPAY_SMTP_USERNAME and HDFPAY_SMTP_PASSWORD, or neither")
        if username is not None and tls == "none" and host not in LOOPBACK_HOSTS:
            raise SmtpConfigError("HDFPAY_SMTP_PASSWORD would cross the network in clear: set "
                                  "HDFPAY_SMTP_TLS to starttls or tls")
        return cls(host=host, port=port, tls=tls, sender=sender, username=username, password=password)


def message_id_header(mail: OutgoingMail, settings: SmtpSettings) -> str:
    """The same at every attempt of one message: its row's id, at the sender's domain."""
    return f"<{mail.message_id}@{settings.sender_domain}>"


def build_message(mail: OutgoingMail, settings: SmtpSettings) -> EmailMessage:
    message = EmailMessage()
    message["From"] = settings.sender
    message["To"] = mail.recipient
    message["Subject"] = mail.subject
    message["Date"] = email.utils.format_datetime(mail.created_at)
    message["Message-ID"] = message_id_header(mail, settings)
    # UTF-8 in quoted-printable: accents survive any server, 8BITMIME or not.
    message.set_content(mail.body, charset="utf-8", cte="quoted-printable")
    return message


def error_text(exc: BaseException) -> str:
    """What is kept of a failure: its class and SMTP codes, never the server's words (a reply
    can echo the recipient's address)."""
    name = type(exc).__name__
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return f"{name} {' '.join(str(r.code) for r in exc.recipients)}".strip()
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"{name} {exc.code}"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{name} errno {exc.errno}"
    return name


def default_sender_id() -> str:
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{os.urandom(4).hex()}"


class MailSender:
    """One sender loop over the outbox; several may run (processes or tasks), each with its own
    sender_id."""

    def __init__(self, pool: asyncpg.Pool, settings: SmtpSettings, *, sender_id: str | None = None,
                 batch_rows: int = MAIL_SEND_BATCH_ROWS,
                 poll_interval_s: float = MAIL_POLL_INTERVAL_S) -> None:
        self.pool = pool
        self.settings = settings
        self.sender_id = sender_id or default_sender_id()
        self.batch_rows = batch_rows
        self.poll_interval_s = poll_interval_s
        # Long enough for every message of a batch to time out, and its database calls.
        self.lease_ms = int(batch_rows * (settings.timeout_s + 2 * MAIL_DB_TIMEOUT_S) * 1000
                            + MAIL_LEASE_MARGIN_MS)
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        """Look for due mail now (e.g. just after a transaction that queued one committed)."""
        self._wake.set()

    def stop(self) -> None:
        """Finish the message in hand, then return from run()."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        log.info("mail sender started", extra={"sender_id": self.sender_id})
        while not self._stopping:
            try:
                handled = await self.send_due()
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                log.warning("mail outbox unreachable (%s): trying again", type(exc).__name__)
                handled = 0
            if handled < self.batch_rows and not self._stopping:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)
                except TimeoutError:
                    pass
                self._wake.clear()
        log.info("mail sender stopped", extra={"sender_id": self.sender_id})

    async def send_due(self) -> int:
        """One round: claim, send, record. Returns how many messages were claimed."""
        async with self.pool.acquire(timeout=MAIL_DB_TIMEOUT_S) as conn:
            claimed = await asyncio.wait_for(
                mail_outbox.claim_due(conn, self.sender_id, self.batch_rows, self.lease_ms),
                MAIL_DB_TIMEOUT_S)
        for mail in claimed:
            if self._stopping:
                break          # the rest stays leased until its lease runs out, then is due again
            await self._send_one(mail)
        return len(claimed)

    async def _send_one(self, mail: OutgoingMail) -> None:
        try:
            await asyncio.wait_for(self._smtp_send(build_message(mail, self.settings)),
                                   self.settings.timeout_s)
        except Exception as exc:  # noqa: BLE001 - any failure postpones; the loop must go on
            error = error_text(exc)
            async with self.pool.acquire(timeout=MAIL_DB_TIMEOUT_S) as conn:
                await asyncio.wait_for(mail_outbox.postpone(conn, mail.id, self.sender_id, error),
                                       MAIL_DB_TIMEOUT_S)
            log.warning("mail postponed", extra={
                "mail_id": mail.id, "mail_kind": mail.kind, "sender_id": self.sender_id,
                "attempts": mail.attempts + 1, "error": error})
            return
        async with self.pool.acquire(timeout=MAIL_DB_TIMEOUT_S) as conn:
            await asyncio.wait_for(mail_outbox.mark_sent(conn, mail.id), MAIL_DB_TIMEOUT_S)
        log.info("mail sent", extra={
            "mail_id": mail.id, "mail_kind": mail.kind, "sender_id": self.sender_id,
            "attempts": mail.attempts + 1})

    async def _smtp_send(self, message: EmailMessage) -> None:
        s = self.settings
        await aiosmtplib.send(
            message, hostname=s.host, port=s.port, username=s.username, password=s.password,
            use_tls=s.tls == "tls", start_tls=s.tls == "starttls", timeout=s.timeout_s)
