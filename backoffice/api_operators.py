"""Operator API routes for the operators themselves: login, logout, who am I, password change,
the region's account management, and the audit trail's verification."""

from __future__ import annotations

import contextlib
import logging

from aiohttp import web

from backoffice.openapi import (OPENAPI_DOCUMENT, OPENAPI_PATH, operation, path_parameter,
                                schema_ref)
from backoffice.operator_auth import Role, current_session, json_error, require
from backoffice.ops_requests import MAX_ID, acquire, json_id, read_json_object
from ledger import operators
from ledger.audit import verify_audit
from ledger.operators import masked_login

log = logging.getLogger("hdfpay.operators")
# argon2 work (logins, password changes) in progress beyond which the API answers 503 at once.
MAX_PASSWORD_CHECKS_IN_FLIGHT = 32
PASSWORD_CHECKS = web.AppKey("password_checks_in_flight", list)


def _account(account: operators.Account) -> dict:
    return {"id": account.id, "login": account.login, "role": account.role,
            "establishment_id": account.establishment_id, "partner_id": account.partner_id,
            "must_change_password": account.must_change_password, "disabled": account.disabled,
            "locked": account.locked, "created_at": account.created_at.isoformat()}


@contextlib.contextmanager
def _password_check_slot(request: web.Request):
    in_flight = request.app[PASSWORD_CHECKS]
    if in_flight[0] >= MAX_PASSWORD_CHECKS_IN_FLIGHT:
        raise json_error(web.HTTPServiceUnavailable, "too many logins in progress: retry shortly",
                         headers={"Retry-After": "1"})
    in_flight[0] += 1
    try:
        yield
    finally:
        in_flight[0] -= 1


def _strings(body: dict, *names: str) -> list[str]:
    values = [body.get(name) for name in names]
    if not all(isinstance(value, str) for value in values):
        raise json_error(web.HTTPBadRequest, f"expected strings: {', '.join(names)}")
    return values


async def login(request: web.Request) -> web.Response:
    login_name, password = _strings(await read_json_object(request), "login", "password")
    with _password_check_slot(request):
        async with acquire(request) as conn:
            try:
                session = await operators.login(conn, login_name, password)
            except operators.LoginRefused as refused:
                log.info("operator login refused", extra={"fields": {
                    "login": masked_login(login_name), "remote": request.remote}})
                raise json_error(web.HTTPUnauthorized, str(refused)) from None
    log.info("operator login", extra={"fields": {"login": session.account.login,
                                                 "remote": request.remote}})
    return web.json_response({"token": session.token, "token_type": "Bearer",
                              "expires_at": session.expires_at.isoformat(),
                              "must_change_password": session.account.must_change_password,
                              "operator": _account(session.account)})


async def logout(request: web.Request) -> web.Response:
    session = current_session(request, password_change_ok=True)
    async with acquire(request) as conn:
        await operators.logout(conn, session)
    return web.Response(status=204)


async def me(request: web.Request) -> web.Response:
    session = current_session(request, password_change_ok=True)
    return web.json_response({"operator": _account(session.account),
                              "session_expires_at": session.expires_at.isoformat()})


async def change_password(request: web.Request) -> web.Response:
    session = current_session(request, password_change_ok=True)
    current, new = _strings(await read_json_object(request), "current_password", "new_password")
    with _password_check_slot(request):
        async with acquire(request) as conn:
            try:
                await operators.change_password(conn, session, current, new)
            except operators.OperatorError as refused:
                raise json_error(web.HTTPBadRequest, str(refused)) from None
    return web.Response(status=204)


async def list_accounts(request: web.Request) -> web.Response:
    require(request, Role.REGION_OPERATOR, Role.AUDITOR)
    async with acquire(request) as conn:
        accounts = await operators.list_operators(conn)
    return web.json_response({"accounts": [_account(account) for account in accounts]})


def _account_error(error: operators.OperatorError) -> web.HTTPException:
    status = {operators.UnknownOperator: web.HTTPNotFound,
              operators.OperatorConflict: web.HTTPConflict}.get(type(error), web.HTTPBadRequest)
    return json_error(status, str(error))


async def create_account(request: web.Request) -> web.Response:
    operator = require(request, Role.REGION_OPERATOR)
    body = await read_json_object(request)
    login_name, role = _strings(body, "login", "role")
    establishment_id, partner_id = json_id(body, "establishment_id"), json_id(body, "partner_id")
    async with acquire(request) as conn:
        try:
            account, provisional = await operators.create_operator(
                conn, actor=operator.actor, login=login_name, role=role,
                establishment_id=establishment_id, partner_id=partner_id)
        except operators.OperatorError as error:
            raise _account_error(error) from None
    return web.json_response({"account": _account(account), "provisional_password": provisional},
                             status=201)


async def disable_account(request: web.Request) -> web.Response:
    operator = require(request, Role.REGION_OPERATOR)
    login_name = request.match_info["login"]
    if login_name == operator.login:
        raise json_error(web.HTTPConflict, "you cannot disable your own account")
    async with acquire(request) as conn:
        try:
            account = await operators.disable_operator(conn, actor=operator.actor,
                                                       login_name=login_name,
                                                       by_operator_id=operator.id)
        except operators.OperatorError as error:
            raise _account_error(error) from None
    return web.json_response({"account": _account(account)})


async def reset_password(request: web.Request) -> web.Response:
    operator = require(request, Role.REGION_OPERATOR)
    login_name = request.match_info["login"]
    if login_name == operator.login:
        # A token alone would then set a new password: one's own goes through the current one.
        raise json_error(web.HTTPConflict, "you cannot reset your own password: change it with "
                                           "POST /v1/ops/password (your current password is asked)")
    async with acquire(request) as conn:
        try:
            provisional = await operators.reset_password(conn, actor=operator.actor,
                                                         login_name=login_name)
        except operators.OperatorError as error:
            raise _account_error(error) from None
    return web.json_response({"login": login_name, "provisional_password": provisional})


async def verify_audit_trail(request: web.Request) -> web.Response:
    """Read-only: verifying changes nothing, so it leaves no row in the audit trail."""
    require(request, Role.REGION_OPERATOR, Role.AUDITOR)
    async with acquire(request) as conn:
        report = await verify_audit(conn)
    return web.json_response({"intact": report.intact, "rows": report.rows,
                              "head_id": report.head_id, "head_hash": report.head_hash,
                              "problems": list(report.problems)})


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI_DOCUMENT])


def add_routes(app: web.Application) -> None:
    app[PASSWORD_CHECKS] = [0]
    app.router.add_get(OPENAPI_PATH, openapi_document)
    app.router.add_post("/v1/ops/login", login)
    app.router.add_post("/v1/ops/logout", logout)
    app.router.add_get("/v1/ops/me", me)
    app.router.add_post("/v1/ops/password", change_password)
    app.router.add_get("/v1/ops/accounts", list_accounts)
    app.router.add_post("/v1/ops/accounts", create_account)
    app.router.add_post("/v1/ops/accounts/{login}/disable", disable_account)
    app.router.add_post("/v1/ops/accounts/{login}/reset-password", reset_password)
    app.router.add_get("/v1/ops/audit/verify", verify_audit_trail)


_REGION, _AUDITOR = Role.REGION_OPERATOR.value, Role.AUDITOR.value
_LOGIN = path_parameter("login", "the account's login", "^[a-z][a-z0-9._-]{2,63}$")
_ID = {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_ID}
OPENAPI_SCHEMAS = {
    "Account": {"type": "object", "properties": {
        "id": {"type": "integer"}, "login": {"type": "string"},
        "role": {"enum": [role.value for role in Role]},
        "establishment_id": _ID, "partner_id": _ID, "must_change_password": {"type": "boolean"},
        "disabled": {"type": "boolean"}, "locked": {"type": "boolean"},
        "created_at": {"type": "string", "format": "date-time"}}},
    "ProvisionalPassword": {"type": "string", "description": "Shown this once; to be changed at "
                            "first login."},
}
OPENAPI_PATHS = {
    OPENAPI_PATH: {"get": operation("getOpenApi", "This document.", roles=None,
                                    ok_schema={"type": "object"})},
    "/v1/ops/login": {"post": operation(
        "login", "Open a session (one answer for any refusal; locked after "
        f"{operators.LOGIN_FAILURES_BEFORE_LOCK} failures for {operators.LOGIN_LOCK_MS // 60000} min).",
        roles=None, errors=("BadRequest", "Unauthorized", "TooLarge"),
        body={"type": "object", "required": ["login", "password"],
              "properties": {"login": {"type": "string"}, "password": {"type": "string"}}},
        ok_schema={"type": "object", "properties": {
            "token": {"type": "string"}, "token_type": {"const": "Bearer"},
            "expires_at": {"type": "string", "format": "date-time"},
            "must_change_password": {"type": "boolean"}, "operator": schema_ref("Account")}})},
    "/v1/ops/logout": {"post": operation("logout", "End this session.", roles=(),
                                         ok_status="204")},
    "/v1/ops/me": {"get": operation(
        "me", "The caller's account and session.", roles=(),
        ok_schema={"type": "object", "properties": {
            "operator": schema_ref("Account"),
            "session_expires_at": {"type": "string", "format": "date-time"}}})},
    "/v1/ops/password": {"post": operation(
        "changePassword", "Change one's own password (other sessions end).", roles=(),
        ok_status="204", errors=("BadRequest", "TooLarge"),
        body={"type": "object", "required": ["current_password", "new_password"], "properties": {
            "current_password": {"type": "string"},
            "new_password": {"type": "string", "minLength": 12, "maxLength": 128}}})},
    "/v1/ops/accounts": {
        "get": operation("listAccounts", "Every operator account.", roles=(_REGION, _AUDITOR),
                         ok_schema={"type": "object", "properties": {
                             "accounts": {"type": "array", "items": schema_ref("Account")}}}),
        "post": operation(
            "createAccount", "A new account with a provisional password.", roles=(_REGION,),
            ok_status="201", errors=("BadRequest", "Conflict", "TooLarge"),
            body={"type": "object", "required": ["login", "role"], "properties": {
                "login": {"type": "string"}, "role": {"enum": [role.value for role in Role]},
                "establishment_id": _ID, "partner_id": _ID}},
            ok_schema={"type": "object", "properties": {
                "account": schema_ref("Account"),
                "provisional_password": schema_ref("ProvisionalPassword")}})},
    "/v1/ops/accounts/{login}/disable": {"post": operation(
        "disableAccount", "Disable an account for good; its sessions end. Refused (409) for "
        "one's own account, and for a region operator when fewer than "
        f"{operators.MIN_OTHER_REGION_OPERATOR_ACCOUNTS} other active region operator would "
        "remain besides the caller.", roles=(_REGION,),
        errors=("NotFound", "Conflict"), parameters=[_LOGIN],
        ok_schema={"type": "object", "properties": {"account": schema_ref("Account")}})},
    "/v1/ops/accounts/{login}/reset-password": {"post": operation(
        "resetPassword", "A new provisional password; the lock lifted, sessions ended. Refused "
        "(409) for one's own account: POST /v1/ops/password asks the current password.",
        roles=(_REGION,), errors=("NotFound", "Conflict"), parameters=[_LOGIN],
        ok_schema={"type": "object", "properties": {
            "login": {"type": "string"},
            "provisional_password": schema_ref("ProvisionalPassword")}})},
    "/v1/ops/audit/verify": {"get": operation(
        "verifyAudit", "Recompute the audit trail's hash chain (read-only: not audited).",
        roles=(_REGION, _AUDITOR),
        ok_schema={"type": "object", "properties": {
            "intact": {"type": "boolean"}, "rows": {"type": "integer"},
            "head_id": {"type": "integer"}, "head_hash": {"type": "string"},
            "problems": {"type": "array", "items": {"type": "string"}}}})},
}
