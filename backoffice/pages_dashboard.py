"""The operators' dashboard: today's terminal messages, the approval rate, declines by reason,
net volumes by partner category, the last days' volumes and the school year's bulk reload. The
numbers are those of the API's reports (ledger.reports.volumes and declines, over Paris business
days of the business clock) and of GET /v1/ops/school-years/{year}/bulk-reload; the charts are
SVG drawn here (svg_charts), with the same numbers in a table beside each. Region operators and
auditors, as the reports."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import aiohttp_jinja2
from aiohttp import web

from backoffice.api_school_year import BULK_RELOADS
from backoffice.operator_auth import POOL, Operator, Role
from backoffice.page_session import BASE, operator_page
from backoffice.svg_charts import Bar, bar_chart
from ledger import bulk_reload, reports, school_calendar
from ledger.clock import business_today
from terminal_protocol.amounts import format_euros
from terminal_protocol.response_codes import APPROVED_CODES, describe

routes = web.RouteTableDef()
DASHBOARD_PATH = BASE + "/tableau-de-bord"
DAYS_SHOWN = 7
CATEGORIES_FR = {"BOOKSHOP": "Librairies", "EQUIPMENT": "Équipement professionnel"}
WEEKDAYS_FR = ("lun.", "mar.", "mer.", "jeu.", "ven.", "sam.", "dim.")


def approval_permille(messages: int, declined: int) -> int | None:
    """Approved messages per thousand, rounded half up, in integers (None: no message)."""
    if messages <= 0:
        return None
    return ((messages - declined) * 1000 + messages // 2) // messages


def _percent(permille: int | None) -> str:
    return "—" if permille is None else f"{permille // 10},{permille % 10} %"


def _subtotals(rows: list[dict]) -> dict[tuple[dt.date, str], dict]:
    """The volumes report's subtotal rows, (day, category) → row."""
    return {(r["business_day"], r["category"]): r for r in rows
            if r["business_day"] is not None and r["category"] is not None
            and r["partner_id"] is None}


@routes.get(DASHBOARD_PATH)
@operator_page(Role.REGION_OPERATOR, Role.AUDITOR)
async def dashboard(request: web.Request, operator: Operator):
    async with request.app[POOL].acquire() as conn:
        today = await business_today(conn)
        first_day = today - dt.timedelta(days=DAYS_SHOWN - 1)
        volumes = _subtotals(await reports.volumes(conn, reports.Period(first_day, today)))
        messages, decline_rows = await reports.declines(conn, reports.Period(today, today),
                                                        APPROVED_CODES)
        year = await school_calendar.reload_school_year(conn)
        run = await bulk_reload.latest_run(conn, year)
        zone = await school_calendar.business_time_zone(conn)
    declines = Counter()
    for row in decline_rows:
        declines[row["response_code"]] += row["count"]
    declined = sum(declines.values())
    by_category = [(code, label, volumes.get((today, code))) for code, label in CATEGORIES_FR.items()]
    days = [first_day + dt.timedelta(days=n) for n in range(DAYS_SHOWN)]
    day_net = {day: sum(volumes[(day, code)]["net_cents"] for code in CATEGORIES_FR
                        if (day, code) in volumes) for day in days}
    reasons = [(code, describe(code).cashier_text, count) for code, count in declines.most_common()]
    task = request.config_dict.get(BULK_RELOADS, {}).get(year)
    return aiohttp_jinja2.render_template("bo_dashboard.html", request, {
        "operator": operator, "today": today, "messages": messages, "declined": declined,
        "approved_purchases": sum(row["purchases_count"] for _, _, row in by_category if row),
        "net_today_cents": day_net[today], "rate": _percent(approval_permille(messages, declined)),
        "reasons": reasons, "by_category": by_category, "days": days, "day_net": day_net,
        "weekday": lambda day: WEEKDAYS_FR[day.weekday()],
        "declines_chart": bar_chart("refus", f"Refus du jour par motif, {declined} en tout", [
            Bar(f"{code} · {text}", count, str(count), "bar declined") for code, text, count in reasons]),
        "categories_chart": bar_chart("categories", "Montant net du jour par catégorie", [
            Bar(label, row["net_cents"] if row else 0, format_euros(row["net_cents"] if row else 0),
                f"bar {code.lower()}") for code, label, row in by_category]),
        "days_chart": bar_chart("jours", f"Montant net des {DAYS_SHOWN} derniers jours", [
            Bar(f"{WEEKDAYS_FR[day.weekday()]} {day:%d/%m}", day_net[day],
                format_euros(day_net[day])) for day in days]),
        "year": year, "run": run, "zone": zone, "reload_running": task is not None and not task.done()})
