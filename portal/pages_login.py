"""Identification (dossier or card number, and a password), logout, and the change of password
that a provisional password requires at the first login."""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from ledger import students
from ledger.students import SESSION_LIFETIME_MS, StudentAccountError, StudentSession
from portal.student_session import (LOGIN_PATH, PASSWORD_PATH, POOL, SESSION_COOKIE, current,
                                    students_only)
from web.security import set_cookie

routes = web.RouteTableDef()
FIELD_MAX_CHARS = 200          # what a login form's field may hold before it is even looked at


def _field(form, name: str) -> str:
    value = form.get(name)
    return value[:FIELD_MAX_CHARS] if isinstance(value, str) else ""


@routes.get(LOGIN_PATH)
async def login_page(request: web.Request):
    if current(request) is not None:
        raise web.HTTPSeeOther("/ma-carte")
    return aiohttp_jinja2.render_template("login.html", request, {"error": None, "identifier": ""})


@routes.post(LOGIN_PATH)
async def login(request: web.Request):
    form = await request.post()
    identifier, password = _field(form, "identifiant"), _field(form, "mot_de_passe")
    async with request.app[POOL].acquire() as conn:
        try:
            session = await students.login(conn, identifier, password)
        except StudentAccountError as exc:
            response = aiohttp_jinja2.render_template(
                "login.html", request, {"error": str(exc), "identifier": identifier})
            response.set_status(401)
            return response
    response = web.HTTPSeeOther(PASSWORD_PATH if session.student.must_change_password
                                else "/ma-carte")
    set_cookie(request, response, SESSION_COOKIE, session.token,
               max_age_s=SESSION_LIFETIME_MS // 1000)
    raise response


@routes.post("/deconnexion")
async def logout(request: web.Request):
    session = current(request)
    if session is not None:
        await students.logout(request.app[POOL], session.session_id)
    response = web.HTTPSeeOther(LOGIN_PATH)
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


@routes.get(PASSWORD_PATH)
@students_only
async def password_page(request: web.Request, session: StudentSession):
    return aiohttp_jinja2.render_template("password.html", request,
                                          {"session": session, "error": None})


@routes.post(PASSWORD_PATH)
@students_only
async def change_password(request: web.Request, session: StudentSession):
    form = await request.post()
    new = _field(form, "nouveau")
    if new != _field(form, "confirmation"):
        error = "Les deux saisies du nouveau mot de passe diffèrent"
    else:
        async with request.app[POOL].acquire() as conn:
            try:
                await students.change_password(conn, session, _field(form, "actuel"), new)
            except StudentAccountError as exc:
                error = str(exc)
            else:
                raise web.HTTPSeeOther("/ma-carte?mot-de-passe=change")
    response = aiohttp_jinja2.render_template("password.html", request,
                                              {"session": session, "error": error})
    response.set_status(400)
    return response
