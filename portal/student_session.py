"""Who is logged in: the session cookie resolved on each request, and the pages that need it.

A page for students only redirects to the login page without a live session, and to the
password page while the provisional password has not been changed.
"""

from __future__ import annotations

import functools
from pathlib import Path

import asyncpg
from aiohttp import web

from ledger.students import StudentSession, resolve_session

SESSION_COOKIE = "hdf_session"
POOL = web.AppKey("pool", asyncpg.Pool)
PHOTO_DIR = web.AppKey("photo_dir", Path)       # applicants' photos, outside the web root
STUDENT = web.RequestKey("student_session", object)
LOGIN_PATH = "/connexion"
PASSWORD_PATH = "/mot-de-passe"


@web.middleware
async def session_middleware(request: web.Request, handler):
    token = request.cookies.get(SESSION_COOKIE)
    request[STUDENT] = await resolve_session(request.app[POOL], token) if token else None
    return await handler(request)


def current(request: web.Request) -> StudentSession | None:
    return request.get(STUDENT)


def students_only(handler):
    """The page of a logged-in student whose password is their own."""
    @functools.wraps(handler)
    async def page(request: web.Request):
        session = current(request)
        if session is None:
            raise web.HTTPSeeOther(LOGIN_PATH)
        if session.student.must_change_password and request.path != PASSWORD_PATH:
            raise web.HTTPSeeOther(PASSWORD_PATH)
        return await handler(request, session)
    return page
