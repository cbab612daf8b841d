"""A local HTTP API for the shop's till software, on loopback only, behind a bearer token.

The till posts a sale and gets the outcome once the card is tapped and the server answered (or
the agent gave up and queued the reversal). The token lives in the agent's state directory,
readable by the shop's user only: another local program cannot refund to a card of its choice.
"""

from __future__ import annotations

import dataclasses
import json
import hmac
import os
import re
import secrets
from pathlib import Path

from aiohttp import web

from terminal_protocol.agent.agent import TerminalAgent
from terminal_protocol.amounts import AmountError, parse_euros

TILL_API_HOST = "127.0.0.1"
TOKEN_FILE_NAME = "till-api.token"
MAX_BODY_BYTES = 1024
# The till's own id of a sale: the same id sent again gets the first sale's outcome.
TILL_REFERENCE = re.compile(r"[A-Za-z0-9_-]{1,64}")
AGENT = web.AppKey("agent", TerminalAgent)
TOKEN = web.AppKey("token", str)


def till_token(state_dir: Path) -> str:
    """The bearer token, made on first start (file mode 0600)."""
    path = state_dir / TOKEN_FILE_NAME
    if not path.exists():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


@web.middleware
async def _authenticated(request: web.Request, handler):
    expected = f"Bearer {request.app[TOKEN]}"
    if not hmac.compare_digest(request.headers.get("Authorization", ""), expected):
        return web.json_response({"error": "jeton manquant ou invalide"}, status=401)
    return await handler(request)


def till_app(agent: TerminalAgent, token: str) -> web.Application:
    app = web.Application(middlewares=[_authenticated], client_max_size=MAX_BODY_BYTES)
    app[AGENT], app[TOKEN] = agent, token
    app.router.add_post("/v1/sale", _sale)
    app.router.add_post("/v1/cancel", _cancel)
    app.router.add_post("/v1/void-last", _void_last)
    app.router.add_post("/v1/refund", _refund)
    app.router.add_get("/v1/totals", _totals)
    app.router.add_get("/v1/transactions", _transactions)
    app.router.add_post("/v1/reprint", _reprint)
    app.router.add_post("/v1/close-batch", _close_batch)
    app.router.add_get("/v1/status", _status)
    app.router.add_get("/v1/metrics", _metrics)
    return app


async def _sale(request: web.Request) -> web.Response:
    body = await _json(request)
    amount = await _amount(request, body)
    reference = body.get("till_reference")
    if reference is not None and not (isinstance(reference, str)
                                      and TILL_REFERENCE.fullmatch(reference)):
        raise _bad_request("« till_reference » : 1 à 64 caractères parmi A-Z a-z 0-9 _ -")
    return _outcome(await request.app[AGENT].sale(amount, reference))


async def _cancel(request: web.Request) -> web.Response:
    request.app[AGENT].cancel_tap()
    return web.json_response({"cancelled": True})


async def _void_last(request: web.Request) -> web.Response:
    body = await _json(request) if request.can_read_body else {}
    return _outcome(await request.app[AGENT].void_last(_supervisor_pin(body)))


async def _refund(request: web.Request) -> web.Response:
    body = await _json(request)
    amount = await _amount(request, body)
    rrn = body.get("rrn")
    if not isinstance(rrn, str):
        raise _bad_request("« rrn » : la référence du ticket (12 chiffres) est requise")
    return _outcome(await request.app[AGENT].refund(rrn.strip(), amount, _supervisor_pin(body)))


async def _totals(request: web.Request) -> web.Response:
    return _outcome(request.app[AGENT].totals())


async def _transactions(request: web.Request) -> web.Response:
    return _outcome(request.app[AGENT].transactions())


async def _reprint(request: web.Request) -> web.Response:
    return _outcome(await request.app[AGENT].reprint_last())


async def _close_batch(request: web.Request) -> web.Response:
    body = await _json(request) if request.can_read_body else {}
    return _outcome(await request.app[AGENT].close_batch(_supervisor_pin(body)))


def _supervisor_pin(body: dict) -> str | None:
    """The supervisor's PIN typed on the till, for what needs it (absent: pin_required)."""
    pin = body.get("supervisor_pin")
    if pin is not None and not isinstance(pin, str):
        raise _bad_request("« supervisor_pin » : le code superviseur, en texte (ex. \"1234\")")
    return pin


async def _status(request: web.Request) -> web.Response:
    return web.json_response(request.app[AGENT].status())


async def _metrics(request: web.Request) -> web.Response:
    """The agent's metrics in Prometheus's text format (also in state_dir/agent.prom)."""
    return web.Response(body=request.app[AGENT].metrics.text(),
                        content_type="text/plain", charset="utf-8")


async def _json(request: web.Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise _bad_request("corps JSON invalide") from None
    if not isinstance(body, dict):
        raise _bad_request("un objet JSON est attendu")
    return body


async def _amount(request: web.Request, body: dict | None = None) -> int:
    body = body if body is not None else await _json(request)
    amount = body.get("amount")
    if not isinstance(amount, str):   # a number is ambiguous: 250 cents or 250 euros?
        raise _bad_request("« amount » : un texte en euros, par exemple \"12,50\"")
    try:
        cents = parse_euros(amount)
    except AmountError as exc:
        raise _bad_request(exc.cashier_text) from None
    if cents <= 0:              # malformed like any other bad amount, not a business refusal
        raise _bad_request("« amount » : un montant supérieur à 0, par exemple \"12,50\"")
    return cents


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}, ensure_ascii=False),
                              content_type="application/json")


def _outcome(outcome) -> web.Response:
    return web.json_response(dataclasses.asdict(outcome))
