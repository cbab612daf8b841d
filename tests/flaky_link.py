"""A TCP relay between a terminal agent and the server that a test can cut or make deaf.

- forward: bytes flow both ways;
- deaf: requests reach the server, its answers are dropped (the terminal times out while the
  server has approved: the case auto-reversal exists for);
- down: every connection is closed and new ones are refused at once.
Tests wait on `answers` (an asyncio.Condition over the count of answers the server gave, relayed
or dropped), never sleep.
"""

from __future__ import annotations

import asyncio
import contextlib

ANSWER_START = b"HTTP/1.1 "
RELAY_CHUNK_BYTES = 65_536


class FlakyLink:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self.mode = "forward"
        self.server_answers = 0
        self.answers = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._on_answer: list = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> "FlakyLink":
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        self.go_down()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def go_down(self) -> None:
        self.mode = "down"
        for writer in list(self._writers):
            writer.close()

    def after_next_answer(self, action) -> None:
        """Run `action()` as soon as the server has answered the next request (before the answer
        is relayed or dropped): the server has then decided it."""
        self._on_answer.append(action)

    async def wait_for_answers(self, count: int, timeout_s: float) -> None:
        async with self.answers:
            await asyncio.wait_for(self.answers.wait_for(lambda: self.server_answers >= count),
                                   timeout_s)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "down":
            writer.close()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, upstream_writer))
        try:
            await asyncio.gather(self._pipe(reader, upstream_writer, upstream=True),
                                 self._pipe(upstream_reader, writer, upstream=False))
        finally:
            for side in (writer, upstream_writer):
                self._writers.discard(side)
                side.close()

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *,
                    upstream: bool) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await source.read(RELAY_CHUNK_BYTES):
                if not upstream and chunk.startswith(ANSWER_START):
                    await self._count_answer()
                if self.mode == "down":
                    break
                if upstream or self.mode == "forward":
                    sink.write(chunk)
                    await sink.drain()
        sink.close()

    async def _count_answer(self) -> None:
        while self._on_answer:
            self._on_answer.pop(0)()
        async with self.answers:
            self.server_answers += 1
            self.answers.notify_all()


def server_port(server) -> int:
    """The port of a running_server() (its URL is http://127.0.0.1:PORT)."""
    return int(server.url.rsplit(":", 1)[1])
