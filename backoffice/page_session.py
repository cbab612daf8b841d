"""The back office's pages in a browser: the operator's session in an HttpOnly cookie (the API
keeps its bearer tokens), the same accounts, roles and sessions (ledger/operators.py), and a page
decorator that sends an anonymous visitor to the login page and refuses a role (403 page)."""

from __future__ import annotations

import functools

import aiohttp_jinja2
from aiohttp import web

from backoffice.operator_auth import POOL, Operator, Role, operator_of
from ledger.operators import Session, resolve_session

BASE = "/bureau"
COOKIE = "hdf_ops_session"
LOGIN_PATH = BASE + "/connexion"
PASSWORD_PATH = BASE + "/mot-de-passe"
PAGE_SESSION = web.RequestKey("page_session", object)


@web.middleware
async def cookie_session(request: web.Request, handler):
    token = request.cookies.get(COOKIE)
    request[PAGE_SESSION] = await resolve_session(request.app[POOL], token) if token else None
    return await handler(request)


def page_session(request: web.Request) -> Session | None:
    return request.get(PAGE_SESSION)


def operator_page(*roles: Role):
    """The page of a logged-in operator of one of `roles`, whose password is their own."""
    def decorate(handler):
        @functools.wraps(handler)
        async def page(request: web.Request):
            session = page_session(request)
            if session is None:
                raise web.HTTPSeeOther(LOGIN_PATH)
            if session.account.must_change_password and request.path != PASSWORD_PATH:
                raise web.HTTPSeeOther(PASSWORD_PATH)
            operator = operator_of(session)
            if operator.role not in roles:
                response = aiohttp_jinja2.render_template("forbidden.html", request,
                                                          {"operator": operator})
                response.set_status(403)
                return response
            return await handler(request, operator)
        return page
    return decorate


EVERY_ROLE = tuple(Role)
SEARCHERS = (Role.REGION_OPERATOR, Role.ESTABLISHMENT_STAFF, Role.AUDITOR)


def scope(operator: Operator) -> int | None:
    """An establishment's staff see their own students only."""
    return operator.establishment_id if operator.role is Role.ESTABLISHMENT_STAFF else None
