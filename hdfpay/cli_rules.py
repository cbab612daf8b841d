"""`hdfpay rules show | set`: the region's limits, fee and renewal date, which the ledger holds
(table rules) so that every server applies the same; each change audited as "cli:<unix user>"."""

from __future__ import annotations

import argparse
import re

from hdfpay.cli_support import cli_actor, run_on_database
from ledger.rules import RulesRefused, current_rules, set_rules
from terminal_protocol.amounts import AmountError, format_euros, parse_euros

_MONTH_DAY = re.compile(r"^(\d{2})-(\d{2})$")


def euros(text: str) -> int:
    try:
        return parse_euros(text)
    except AmountError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def month_day(text: str) -> tuple[int, int]:
    match = _MONTH_DAY.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a month and day MM-DD such as 06-20, got {text!r}")
    return int(match[1]), int(match[2])


euros.__name__ = "amount in euros"
month_day.__name__ = "month and day"


def _print(rules) -> None:
    print(f"max purchase amount    {format_euros(rules.max_purchase_amount_cents)} (declined 61 above)")
    print(f"replacement fee        {format_euros(rules.replacement_fee_cents)} (lost, stolen, damaged)")
    print(f"rights renewal opens   {rules.rights_renewal_opens_day:02d}/"
          f"{rules.rights_renewal_opens_month:02d} for the next school year")
    print(f"first-card requests    open {rules.first_card_requests_open_day:02d}/"
          f"{rules.first_card_requests_open_month:02d} for the next school year, until its"
          " wallet closes")


def cmd_rules(args, settings) -> int:
    async def work(conn) -> int:
        if args.rules_action == "set":
            changes = {}
            if args.max_purchase is not None:
                changes["max_purchase_amount_cents"] = args.max_purchase
            if args.replacement_fee is not None:
                changes["replacement_fee_cents"] = args.replacement_fee
            if args.renewal_opens is not None:
                changes["rights_renewal_opens_month"], changes["rights_renewal_opens_day"] = \
                    args.renewal_opens
            if args.first_card_opens is not None:
                changes["first_card_requests_open_month"], changes["first_card_requests_open_day"] = \
                    args.first_card_opens
            if not changes:
                raise RulesRefused("nothing to change: give --max-purchase, --replacement-fee, "
                                   "--renewal-opens or --first-card-opens")
            _print(await set_rules(conn, actor=cli_actor(), **changes))
        else:
            _print(await current_rules(conn))
        return 0
    return run_on_database(settings, work, (RulesRefused,))


def add_commands(subcommands) -> None:
    p = subcommands.add_parser(
        "rules", help="the region's purchase limit, replacement fee and renewal date (show, set)",
        description="The ledger holds these (table rules), so every server applies the same; "
                    "a change is audited and applies to the next message.")
    actions = p.add_subparsers(dest="rules_action", required=True, metavar="ACTION")
    actions.add_parser("show", help="the rules in force")
    setting = actions.add_parser("set", help="change one or more rules")
    setting.add_argument("--max-purchase", type=euros, metavar="EUROS",
                         help="per-purchase ceiling, e.g. 300 (declined 61 above)")
    setting.add_argument("--replacement-fee", type=euros, metavar="EUROS",
                         help="a lost, stolen or damaged card's replacement, e.g. 5")
    setting.add_argument("--renewal-opens", type=month_day, metavar="MM-DD",
                         help="when rights renewal opens for the next school year, e.g. 06-20")
    setting.add_argument("--first-card-opens", type=month_day, metavar="MM-DD",
                         help="when online first-card requests open for the next school year,"
                              " e.g. 06-21")
    p.set_defaults(func=cmd_rules)
