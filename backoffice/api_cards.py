"""Operator API routes for cards (opposition, replacement), first-card requests and partners
(management, search by geolocation). The rules are in the ledger; here only who may call what:
region operators change things, auditors read, establishment staff see and pre-validate their own
students' requests, partners read their own shop, and every role may search partners."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import math
import re

from aiohttp import web

from backoffice.api_cards_openapi import (CARD_PATH, DEFAULT_SEARCH_RADIUS_M, OPENAPI_PATHS,
                                          OPENAPI_SCHEMAS, PARTNERS_PATH, REQUESTS_PATH)
from backoffice.operator_auth import Role, json_error, require
from backoffice.ops_requests import acquire, path_id, read_json_object
from ledger import card_requests, cards, partners
from ledger.cards import Conflict, Invalid, NotFound, OutOfScope, Refused

_STATUS = {NotFound: web.HTTPNotFound, Conflict: web.HTTPConflict, Invalid: web.HTTPBadRequest,
           OutOfScope: web.HTTPForbidden}
REGION, AUDITOR, STAFF, PARTNER = (Role.REGION_OPERATOR, Role.AUDITOR, Role.ESTABLISHMENT_STAFF,
                                   Role.PARTNER)
__all__ = ["OPENAPI_PATHS", "OPENAPI_SCHEMAS", "add_routes"]


@contextlib.contextmanager
def _answers():
    """The ledger's refusals as JSON errors: 404, 409, 400, 403."""
    try:
        yield
    except Refused as refused:
        raise json_error(_STATUS.get(type(refused), web.HTTPBadRequest), str(refused)) from None


def _json(value) -> dict:
    """A ledger dataclass as JSON-ready data (dates in ISO 8601)."""
    def plain(v):
        if isinstance(v, (dt.datetime, dt.date)):
            return v.isoformat()
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(value))


def _field(body: dict, name: str, kind: type, *, required: bool = False):
    value = body.get(name)
    if value is None:
        if required:
            raise json_error(web.HTTPBadRequest, f"{name} is required")
        return None
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise json_error(web.HTTPBadRequest, f"{name} must be a {'number' if kind is float else kind.__name__}")
    return value


async def get_card(request: web.Request) -> web.Response:
    require(request, REGION, AUDITOR)
    async with acquire(request) as conn:
        with _answers():
            card = await cards.find_card(conn, request.match_info["card"])
    return web.json_response({"card": _json(card)})


async def oppose(request: web.Request) -> web.Response:
    operator = require(request, REGION)
    reason = _field(await read_json_object(request), "reason", str, required=True)
    async with acquire(request) as conn, conn.transaction():
        with _answers():
            card = await cards.find_card(conn, request.match_info["card"])
            card = await cards.oppose_card(conn, card.id, reason, actor=operator.actor)
    return web.json_response({"card": _json(card)})


async def replace(request: web.Request) -> web.Response:
    operator = require(request, REGION)
    body = await read_json_object(request)
    uid_text = _field(body, "uid", str, required=True)
    async with acquire(request) as conn, conn.transaction():
        with _answers():
            card = await cards.find_card(conn, request.match_info["card"])
            done = await cards.replace_card(
                conn, card.id, cards.parse_uid(uid_text), actor=operator.actor,
                reason=_field(body, "reason", str), new_card_number=_field(body, "card_number", str))
    return web.json_response({"replacement": _json(done)}, status=201)


async def submit_request(request: web.Request) -> web.Response:
    operator = require(request, REGION)
    dossier = _field(await read_json_object(request), "dossier_number", str, required=True)
    async with acquire(request) as conn, conn.transaction():
        with _answers():
            created = await card_requests.submit(conn, dossier, actor=operator.actor)
    return web.json_response({"card_request": _json(created)}, status=201)


async def list_requests(request: web.Request) -> web.Response:
    operator = require(request, REGION, AUDITOR, STAFF)
    query = request.query
    state = query.get("state")
    if state is not None and card_requests.parse_state(state) not in card_requests.STATES:
        raise json_error(web.HTTPBadRequest, f"state is one of {', '.join(card_requests.STATES)}")
    async with acquire(request) as conn:
        found = await card_requests.list_requests(
            conn, state=query.get("state"), dossier_number=query.get("dossier_number"),
            establishment_id=operator.establishment_id if operator.role is STAFF else None)
    return web.json_response({"card_requests": [_json(r) for r in found]})


async def get_request(request: web.Request) -> web.Response:
    operator = require(request, REGION, AUDITOR, STAFF)
    async with acquire(request) as conn:
        with _answers():
            found = await card_requests.get(conn, path_id(request, "request_id"))
    if operator.role is STAFF and found.establishment_id != operator.establishment_id:
        raise json_error(web.HTTPForbidden, "this request is not for a student of your establishment")
    return web.json_response({"card_request": _json(found)})


async def advance_request(request: web.Request) -> web.Response:
    operator = require(request, REGION, STAFF)
    body = await read_json_object(request)
    uid_text = _field(body, "card_uid", str)
    async with acquire(request) as conn, conn.transaction():
        with _answers():
            moved = await card_requests.advance(
                conn, path_id(request, "request_id"), _field(body, "state", str, required=True),
                actor=operator.actor, reason=_field(body, "reason", str),
                card_uid=cards.parse_uid(uid_text) if uid_text else None,
                card_number=_field(body, "card_number", str),
                establishment_id=operator.establishment_id if operator.role is STAFF else None)
    return web.json_response({"card_request": _json(moved)})


async def list_partners(request: web.Request) -> web.Response:
    require(request, REGION, AUDITOR)
    status = request.query.get("status")
    if status is not None and status.strip().upper() not in partners.STATUSES:
        raise json_error(web.HTTPBadRequest, f"status is one of {', '.join(partners.STATUSES)}")
    async with acquire(request) as conn:
        with _answers():
            found = await partners.list_partners(conn, category=request.query.get("category"),
                                                 status=request.query.get("status"))
    return web.json_response({"partners": [_json(p) for p in found]})


async def add_partner(request: web.Request) -> web.Response:
    operator = require(request, REGION)
    body = await read_json_object(request)
    fields = {name: _field(body, name, kind, required=True) for name, kind in _PARTNER_FIELDS}
    async with acquire(request) as conn, conn.transaction():
        with _answers():
            added = await partners.add_partner(conn, **fields, actor=operator.actor)
    return web.json_response({"partner": _json(added)}, status=201)


async def get_partner(request: web.Request) -> web.Response:
    operator = require(request, REGION, AUDITOR, PARTNER)
    partner_id = path_id(request, "partner_id")
    if operator.role is PARTNER and operator.partner_id != partner_id:
        raise json_error(web.HTTPForbidden, "a partner account sees its own shop only")
    async with acquire(request) as conn:
        with _answers():
            found = await partners.get_partner(conn, partner_id)
    return web.json_response({"partner": _json(found)})


async def update_partner(request: web.Request) -> web.Response:
    operator = require(request, REGION)
    body = await read_json_object(request)
    unknown = set(body) - {name for name, _ in _PARTNER_FIELDS}
    if unknown:
        raise json_error(web.HTTPBadRequest, f"unknown fields: {', '.join(sorted(unknown))}")
    nulls = sorted(name for name, value in body.items() if value is None)
    if nulls:      # the schema says each field is a value: a field to keep is left out
        raise json_error(web.HTTPBadRequest, f"null is not a value (leave the field out to "
                                             f"keep it): {', '.join(nulls)}")
    fields = {name: _field(body, name, kind) for name, kind in _PARTNER_FIELDS}
    async with acquire(request) as conn, conn.transaction():
        with _answers():
            updated = await partners.update_partner(conn, path_id(request, "partner_id"),
                                                    actor=operator.actor, **fields)
    return web.json_response({"partner": _json(updated)})


async def set_partner_status(request: web.Request) -> web.Response:
    operator = require(request, REGION)
    status = _field(await read_json_object(request), "status", str, required=True)
    async with acquire(request) as conn, conn.transaction():
        with _answers():
            updated = await partners.set_partner_status(conn, path_id(request, "partner_id"),
                                                        status, actor=operator.actor)
    return web.json_response({"partner": _json(updated)})


async def partners_near(request: web.Request) -> web.Response:
    require(request, *Role)
    query = request.query
    try:
        point = float(query["lat"]), float(query["lon"])
        radius_m = float(query.get("radius_m", DEFAULT_SEARCH_RADIUS_M))
        limit_text = query.get("limit", str(partners.DEFAULT_SEARCH_RESULTS_ROWS))
        if not all(map(math.isfinite, (*point, radius_m))):
            raise ValueError("not a finite number")
        if not re.fullmatch(r"[0-9]{1,9}", limit_text):     # ASCII digits, unlike int()
            raise ValueError("not an integer")
        limit_rows = int(limit_text)
    except (KeyError, ValueError):
        raise json_error(web.HTTPBadRequest, "lat and lon are numbers; radius_m a number of "
                         "metres, limit an integer") from None
    async with acquire(request) as conn:
        with _answers():
            found = await partners.partners_near(conn, *point, radius_m, query.get("category"),
                                                 limit_rows=limit_rows)
    return web.json_response({"partners": [_json(p) for p in found]})


_PARTNER_FIELDS = (("name", str), ("category", str), ("address", str), ("latitude", float),
                   ("longitude", float))


def add_routes(app: web.Application) -> None:
    """Register this area's routes on the operator application."""
    app.router.add_get(CARD_PATH, get_card)
    app.router.add_post(CARD_PATH + "/opposition", oppose)
    app.router.add_post(CARD_PATH + "/replacement", replace)
    app.router.add_post(REQUESTS_PATH, submit_request)
    app.router.add_get(REQUESTS_PATH, list_requests)
    # Ids in ASCII digits (\d would admit any script's); path_id() bounds them.
    app.router.add_get(REQUESTS_PATH + "/{request_id:[0-9]+}", get_request)
    app.router.add_post(REQUESTS_PATH + "/{request_id:[0-9]+}/transitions", advance_request)
    app.router.add_get(PARTNERS_PATH, list_partners)
    app.router.add_post(PARTNERS_PATH, add_partner)
    app.router.add_get(PARTNERS_PATH + "/near", partners_near)
    app.router.add_get(PARTNERS_PATH + "/{partner_id:[0-9]+}", get_partner)
    app.router.add_patch(PARTNERS_PATH + "/{partner_id:[0-9]+}", update_partner)
    app.router.add_post(PARTNERS_PATH + "/{partner_id:[0-9]+}/status", set_partner_status)


