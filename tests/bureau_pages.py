"""Helpers for the back office's page tests: log in through the form in Chromium, and visit a page
as each role (or no one) with a plain HTTP client to check who is refused what."""

from __future__ import annotations

import html

import aiohttp
from playwright.async_api import expect
from yarl import URL

from backoffice.operator_auth import Role

from operator_fixtures import add_test_operator

CSRF = "t"         # the double-submit cookie and field the plain client sends


async def log_in(page, bureau: str, login: str, password: str) -> None:
    await page.goto(bureau + "/connexion")
    await page.get_by_label("Identifiant").fill(login)
    await page.get_by_label("Mot de passe").fill(password)
    await page.get_by_role("button", name="Se connecter").click()
    await expect(page.get_by_role("button", name="Se déconnecter")).to_be_visible()


async def visit(server, token: str | None, method: str, url: str, form: dict | None = None, *,
                csrf_field: str = CSRF) -> tuple[int, str, str, dict]:
    """(status, Location, body unescaped, headers) of one request with that session cookie (None:
    none); a form's CSRF field is `csrf_field` (the cookie's value unless told otherwise)."""
    jar = aiohttp.CookieJar(unsafe=True)
    jar.update_cookies({"hdf_csrf": CSRF, **({"hdf_ops_session": token} if token else {})},
                       URL(server.ops_url))
    data = {"csrf_token": csrf_field, **(form or {})} if method == "POST" else None
    async with aiohttp.ClientSession(cookie_jar=jar) as browser:
        async with browser.request(method, url, data=data, allow_redirects=False) as reply:
            return (reply.status, reply.headers.get("Location", ""),
                    html.unescape((await reply.read()).decode(errors="replace")),
                    dict(reply.headers))


async def role_tokens(dsn: str, *, establishment_id: int = 1, partner_id: int = 1) -> dict:
    """A session token for a new account of each role, and None for no one."""
    tokens = {None: None}
    for role in Role:
        _, tokens[role], _ = await add_test_operator(
            dsn, role, establishment_id=establishment_id if role is Role.ESTABLISHMENT_STAFF else None,
            partner_id=partner_id if role is Role.PARTNER else None)
    return tokens


async def assert_roles_refused_pages(server, tokens: dict, pages) -> None:
    """Each (method, url, form, allowed roles): anonymous → 303 to the login page, a role not
    allowed → 403 (the refusal page), an allowed role → not refused (below 400, or as
    `allowed` says). Every answer carries the strict CSP, and pages with data are not cached."""
    for role, token in tokens.items():
        for method, url, form, allowed in pages:
            status, location, text, headers = await visit(server, token, method, url, form)
            assert "script-src 'self'" in headers["Content-Security-Policy"], (role, url)
            if role is None:
                assert (status, location) == (303, "/bureau/connexion"), (role, method, url)
            elif role not in allowed:
                assert status == 403 and "Accès refusé" in text, (role, method, url, status)
            else:
                assert status < 400, (role, method, url, status, text[:300])
                if status == 200:
                    assert "no-store" in headers.get("Cache-Control", ""), (role, url)
