"""Back-office pages for the operators' accounts: the list, a new account (its provisional
password shown once, on the answer to the form, never in a URL, never cached), disabling one
(for good: its sessions end) and a new provisional password for one. Through ledger.operators,
as /v1/ops/accounts: the same refusals (one's own account is neither disabled nor reset here,
one's own password is changed with the current one; the ledger refuses to disable a region
operator when fewer than MIN_OTHER_REGION_OPERATOR_ACCOUNTS others would stay active) and the
same audit rows (operator.create, operator.disable, operator.password_reset).

Who, as in the API: region operators act; auditors read the list."""

from __future__ import annotations

import re

import aiohttp_jinja2
from aiohttp import web

from backoffice.operator_auth import POOL, Operator, Role
from backoffice.page_session import BASE, PASSWORD_PATH, operator_page
from ledger import operators
from ledger.establishments import establishment_id

routes = web.RouteTableDef()
ACCOUNTS_PATH = BASE + "/comptes"
ACCOUNT_PATH = ACCOUNTS_PATH + r"/{login:[a-z][a-z0-9._-]{2,63}}"
REGION, AUDITOR = Role.REGION_OPERATOR, Role.AUDITOR
FIELD_MAX_CHARS = 64
MAX_PARTNER_ID = 2**31 - 1
ROLES_FR = {"region_operator": "opérateur de la Région", "establishment_staff": "personnel d'établissement",
            "partner": "partenaire", "auditor": "auditeur"}
_UAI = re.compile(r"[0-9]{7}[A-Z]")


def _text(form, name: str) -> str:
    value = form.get(name)
    return value.strip()[:FIELD_MAX_CHARS] if isinstance(value, str) else ""


def _login_shown(request: web.Request) -> str:
    """The account a notice names: a login only (a link cannot make it say more)."""
    text = request.query.get("compte", "")
    return text if operators.LOGIN_PATTERN.match(text) else ""


async def _render(request: web.Request, operator: Operator, *, status: int = 200,
                  provisional: tuple[str, str] | None = None, error: str | None = None,
                  form: dict | None = None):
    async with request.app[POOL].acquire() as conn:
        accounts = await operators.list_operators(conn)
    response = aiohttp_jinja2.render_template("bo_accounts.html", request, {
        "operator": operator, "accounts": accounts, "roles": ROLES_FR,
        "can_act": operator.role is REGION, "provisional": provisional,
        "notice": request.query.get("fait"), "who": _login_shown(request),
        "error": error or request.query.get("refus"), "form": form or {},
        "password_path": PASSWORD_PATH,
        "min_others": operators.MIN_OTHER_REGION_OPERATOR_ACCOUNTS})
    response.set_status(status)
    return response


@routes.get(ACCOUNTS_PATH)
@operator_page(REGION, AUDITOR)
async def accounts_page(request: web.Request, operator: Operator):
    return await _render(request, operator)


@routes.post(ACCOUNTS_PATH)
@operator_page(REGION)
async def create(request: web.Request, operator: Operator):
    form = await request.post()
    login, role = _text(form, "identifiant").lower(), _text(form, "role")
    uai, partner = _text(form, "uai").upper(), _text(form, "partenaire")
    shown = {"identifiant": login, "role": role, "uai": uai, "partenaire": partner}
    async with request.app[POOL].acquire() as conn:
        school = None
        if role == "establishment_staff":
            school = await establishment_id(conn, uai) if _UAI.fullmatch(uai) else None
            if school is None:
                return await _render(request, operator, status=400, error="uai", form=shown)
        partner_id = None
        if role == "partner":
            partner_id = int(partner) if partner.isascii() and partner.isdigit() \
                and 0 < int(partner[:10]) <= MAX_PARTNER_ID else None
            if partner_id is None:
                return await _render(request, operator, status=400, error="partenaire", form=shown)
        try:
            account, provisional = await operators.create_operator(
                conn, actor=operator.actor, login=login, role=role, establishment_id=school,
                partner_id=partner_id)
        except operators.OperatorConflict:
            return await _render(request, operator, status=409, error="pris", form=shown)
        except operators.OperatorError:
            return await _render(request, operator, status=400, error="compte", form=shown)
    return await _render(request, operator, status=201, provisional=(account.login, provisional))


@routes.post(ACCOUNT_PATH + "/desactivation")
@operator_page(REGION)
async def disable(request: web.Request, operator: Operator):
    login = request.match_info["login"]
    form = await request.post()
    if login == operator.login:
        raise web.HTTPSeeOther(f"{ACCOUNTS_PATH}?refus=soi-meme&compte={login}")
    if form.get("confirmation") != "oui":
        raise web.HTTPSeeOther(f"{ACCOUNTS_PATH}?refus=confirmation&compte={login}")
    async with request.app[POOL].acquire() as conn:
        try:
            await operators.disable_operator(conn, actor=operator.actor, login_name=login,
                                             by_operator_id=operator.id)
        except operators.UnknownOperator:
            raise web.HTTPNotFound(text="Compte introuvable") from None
        except operators.OperatorConflict as conflict:
            why = "dernier" if "region operator" in str(conflict) else "desactive"
            raise web.HTTPSeeOther(f"{ACCOUNTS_PATH}?refus={why}&compte={login}") from None
    raise web.HTTPSeeOther(f"{ACCOUNTS_PATH}?fait=desactive&compte={login}")


@routes.post(ACCOUNT_PATH + "/mot-de-passe")
@operator_page(REGION)
async def reset_password(request: web.Request, operator: Operator):
    login = request.match_info["login"]
    if login == operator.login:      # a session alone would then set a password: not one's own
        raise web.HTTPSeeOther(f"{ACCOUNTS_PATH}?refus=propre-mot-de-passe&compte={login}")
    async with request.app[POOL].acquire() as conn:
        try:
            provisional = await operators.reset_password(conn, actor=operator.actor,
                                                         login_name=login)
        except operators.UnknownOperator:
            raise web.HTTPNotFound(text="Compte introuvable") from None
        except operators.OperatorConflict:
            raise web.HTTPSeeOther(f"{ACCOUNTS_PATH}?refus=desactive&compte={login}") from None
    return await _render(request, operator, provisional=(login, provisional))
