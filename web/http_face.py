"""What every listener (terminals, operators, students) shows of itself below the application.

- A plain `Server` header (SERVER_HEADER): aiohttp's default names aiohttp's and Python's
  versions, which only helps someone pick a known flaw.
- HTTP that aiohttp cannot parse, answered by the listener's own function and never logged as
  sent: aiohttp's error quotes the offending line (an `Authorization: Bearer …` line included)
  into an error-level record and into its answer, so a live token would reach the logs in clear.

aiohttp has no public hook for that answer: QuietErrorsAppRunner overrides its runner's
_make_server (the server it builds is given our handler class); tests/test_ops_malformed_http.py
and tests/test_malformed_http.py notice if aiohttp changes it.
"""

from __future__ import annotations

from typing import Callable

from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestHandler

SERVER_HEADER = "hdfpay"

# (status, the parser's exception) → the answer; it must not echo the request's bytes.
MalformedAnswer = Callable[[int, BaseException | None], web.StreamResponse]


async def _plain_server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[hdrs.SERVER] = SERVER_HEADER


def plain_server_header(app: web.Application) -> web.Application:
    """Every answer the application's routes give says `Server: hdfpay`, nothing more."""
    app.on_response_prepare.append(_plain_server_header)
    return app


def plain_answer(status: int, exc: BaseException | None) -> web.Response:
    """The answer of a listener with no format of its own (the students' pages)."""
    return web.Response(status=status, text="malformed HTTP request")


class _QuietRequestHandler(RequestHandler):
    answer_malformed: MalformedAnswer

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's answer (after an error record quoting the raw line), replaced below 500 by
        the listener's own, unlogged here; 5xx are bugs or timeouts: aiohttp keeps its trace."""
        if status >= 500:
            response = super().handle_error(request, status, exc, message)
        else:
            if request.writer.output_size > 0:
                raise ConnectionError("an answer was already sent, no room for the error's")
            response = self.answer_malformed(status, exc)
            response.force_close()
        response.headers[hdrs.SERVER] = SERVER_HEADER
        return response


class _QuietServer(web.Server):
    answer_malformed: MalformedAnswer

    def __call__(self) -> RequestHandler:
        handler = _QuietRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.answer_malformed = self.answer_malformed
        return handler


class QuietErrorsAppRunner(web.AppRunner):
    """An AppRunner whose connections answer unparseable HTTP with `answer_malformed` (which
    may count or log it, without the request's bytes), and with the plain Server header."""

    def __init__(self, app: web.Application, answer_malformed: MalformedAnswer = plain_answer,
                 **kwargs) -> None:
        super().__init__(app, **kwargs)
        self._answer_malformed = answer_malformed

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _QuietServer
        server.answer_malformed = self._answer_malformed
        return server
