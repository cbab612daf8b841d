""""Mot de passe oublié": the request (answered the same whether or not an account matches) and
the single-use link's page where the student chooses a new password."""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from ledger import students
from ledger.students import RESET_PATH, StudentAccountError
from portal.portal_links import LINKS
from portal.student_session import POOL

routes = web.RouteTableDef()
FIELD_MAX_CHARS = 200
TOKEN_ROUTE = RESET_PATH + r"/{token:[A-Za-z0-9_-]{1,64}}"


def _field(form, name: str) -> str:
    value = form.get(name)
    return value[:FIELD_MAX_CHARS] if isinstance(value, str) else ""


@routes.get(RESET_PATH)
async def request_page(request: web.Request):
    return aiohttp_jinja2.render_template("reset_request.html", request, {"sent": False})


@routes.post(RESET_PATH)
async def request_link(request: web.Request):
    form = await request.post()
    links = request.app[LINKS]
    async with request.app[POOL].acquire() as conn:
        if await students.request_password_reset(conn, _field(form, "identifiant"),
                                                 links.public_url):
            links.mail_queued()
    return aiohttp_jinja2.render_template("reset_request.html", request, {"sent": True})


@routes.get(TOKEN_ROUTE)
async def new_password_page(request: web.Request):
    valid = await students.reset_link_is_valid(request.app[POOL], request.match_info["token"])
    response = aiohttp_jinja2.render_template("reset_password.html", request, {
        "token": request.match_info["token"], "valid": valid, "error": None})
    if not valid:
        response.set_status(410)
    return response


@routes.post(TOKEN_ROUTE)
async def set_new_password(request: web.Request):
    form = await request.post()
    token, new = request.match_info["token"], _field(form, "nouveau")
    if new != _field(form, "confirmation"):
        error = "Les deux saisies du nouveau mot de passe diffèrent"
    else:
        async with request.app[POOL].acquire() as conn:
            try:
                await students.reset_password(conn, token, new)
            except StudentAccountError as exc:
                error = str(exc)
            else:
                raise web.HTTPSeeOther("/connexion?mot-de-passe=change")
    response = aiohttp_jinja2.render_template("reset_password.html", request, {
        "token": token, "valid": True, "error": error})
    response.set_status(400)
    return response
