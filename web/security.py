"""Security headers on every answer, and the CSRF check of every form.

The Content-Security-Policy allows nothing but this site's own styles, scripts and images: no
inline script or style, no outside origin, no framing. Pages that show personal data are not
cached. CSRF is a double submit: a random token in an HttpOnly, SameSite=Strict cookie, repeated
in a hidden field of each form; a POST whose field does not match the cookie is refused (403).
"""

from __future__ import annotations

import hmac
import secrets

from aiohttp import web

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "geolocation=(self), camera=(), microphone=()",
}
CSRF_COOKIE = "hdf_csrf"
CSRF_FIELD = "csrf_token"
CSRF_TOKEN_BYTES = 32
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SECURE_COOKIES = web.AppKey("secure_cookies", bool)
_NEW_CSRF = web.RequestKey("hdf_new_csrf", str)


def csrf_token(request: web.Request) -> str:
    """The token a form of this page carries (made, and set as a cookie, on first use)."""
    token = request.cookies.get(CSRF_COOKIE) or request.get(_NEW_CSRF)
    if not token:
        token = request[_NEW_CSRF] = secrets.token_urlsafe(CSRF_TOKEN_BYTES)
    return token


def set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str, *,
               max_age_s: int | None = None) -> None:
    """A cookie scripts cannot read, sent to this site only, over TLS outside loopback."""
    response.set_cookie(name, value, max_age=max_age_s, path="/", httponly=True,
                        samesite="Strict", secure=request.app[SECURE_COOKIES])


@web.middleware
async def security_middleware(request: web.Request, handler):
    if request.method in UNSAFE_METHODS:
        form = await request.post()
        sent, expected = form.get(CSRF_FIELD), request.cookies.get(CSRF_COOKIE)
        if not (isinstance(sent, str) and expected
                and hmac.compare_digest(sent.encode(), expected.encode())):
            raise web.HTTPForbidden(text="Formulaire expiré ou invalide : rechargez la page.",
                                    headers=SECURITY_HEADERS)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(SECURITY_HEADERS)
        raise
    response.headers.update(SECURITY_HEADERS)
    response.headers.setdefault("Cache-Control", "no-store")
    if request.get(_NEW_CSRF):
        set_cookie(request, response, CSRF_COOKIE, request[_NEW_CSRF])
    return response
