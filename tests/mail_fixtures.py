"""pytest plugin: a real SMTP server (aiosmtpd) in the test process, and what it received.

`inbox` collects the messages; `smtp` runs the server on a free loopback port (it can be stopped
and started again); `smtp_settings` is what the product's sender needs to reach it."""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import threading

import pytest
from aiosmtpd.controller import Controller

from portal.mail_sender import SmtpSettings

WAIT_BOUND_S = 20.0          # the longest any test waits for a mail
SENDER = "no-reply@generation.hdf.example"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Inbox:
    """What the SMTP server accepted, with a wait on the count (the server runs in its thread)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.arrived: list[tuple[str, list[str], email.message.EmailMessage]] = []
        self.changed = asyncio.Condition()

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        record = (envelope.mail_from, list(envelope.rcpt_tos), message)
        done = threading.Event()
        self.loop.call_soon_threadsafe(self._add, record, done)
        done.wait(WAIT_BOUND_S)
        return "250 Message accepted for delivery"

    def _add(self, record, done: threading.Event) -> None:
        self.arrived.append(record)
        done.set()

        async def notify():
            async with self.changed:
                self.changed.notify_all()
        asyncio.ensure_future(notify())

    async def wait_for(self, count: int) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: len(self.arrived) >= count), WAIT_BOUND_S)


class SmtpServer:
    """A real aiosmtpd server on a fixed loopback port, which can be stopped and started again."""

    def __init__(self, inbox: Inbox, port: int) -> None:
        self.inbox, self.port, self.controller = inbox, port, None

    async def start(self) -> None:
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)
        await asyncio.to_thread(self.controller.start)

    async def stop(self) -> None:
        if self.controller is not None:
            await asyncio.to_thread(self.controller.stop)
            self.controller = None


@pytest.fixture
async def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
async def smtp(inbox):
    server = SmtpServer(inbox, free_port())
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def smtp_settings(smtp) -> SmtpSettings:
    return SmtpSettings(host="127.0.0.1", port=smtp.port, tls="none", sender=SENDER, timeout_s=5)
