"""`hdfpay cards`, `hdfpay card-requests` and `hdfpay partners`: the region operator's commands
for oppositions, replacements (the region's fee, 5 € by default: hdfpay rules), first-card requests, partner shops and their search by
geolocation. Every change is audited as "cli:<unix user>"."""

from __future__ import annotations



from hdfpay.cli_support import cli_actor as _actor, run_on_database, whole_number
from ledger import card_requests, cards, partners
from ledger.cards import Refused
from ledger.school_calendar import business_time_zone
from terminal_protocol.amounts import format_euros

REASONS = [r.lower() for r in cards.OPPOSITION_REASONS]
STATES = [s.lower().replace("_", "-") for s in card_requests.STATES]
CATEGORIES = [c.lower() for c in partners.CATEGORIES]
DEFAULT_SEARCH_RADIUS_KM = 10.0
METRES_PER_KM = 1000


def _run(settings, work) -> int:
    """Run work(conn) on the database; the ledger's refusals become a message and exit code 2."""
    return run_on_database(settings, work, (Refused,))


def _print_card(card: cards.Card) -> None:
    print(f"card {card.id}  number {card.card_number}  UID {card.uid_hex}  "
          f"dossier {card.dossier_number}")
    print(f"  status {card.status}" + (f" since {card.opposed_at:%Y-%m-%d %H:%M}" if card.opposed_at else "")
          + f"  issued {card.issued_at:%Y-%m-%d}")
    if card.replaces_card_id:
        print(f"  replaces card {card.replaces_card_id}")
    if card.replaced_by_card_id:
        print(f"  replaced by card {card.replaced_by_card_id}")


def cmd_cards(args, settings) -> int:
    async def work(conn) -> None:
        if args.cards_command == "requests":
            zone = await business_time_zone(conn)
            pending = await cards.open_replacement_requests(conn)
            for request in pending:
                print(f"request {request.id}  card {request.card_id}  dossier "
                      f"{request.dossier_number}  {request.reason:<9}  "
                      f"{request.requested_at.astimezone(zone):%Y-%m-%d %H:%M}  {request.requested_by}")
            print(f"{len(pending)} open request(s): 'hdfpay cards replace' fulfils each")
            return
        card = await cards.find_card(conn, args.card)
        if args.cards_command == "oppose":
            async with conn.transaction():
                card = await cards.oppose_card(conn, card.id, args.reason, actor=_actor())
        elif args.cards_command == "replace":
            uid = cards.parse_uid(args.uid)
            async with conn.transaction():
                done = await cards.replace_card(conn, card.id, uid, actor=_actor(), reason=args.reason,
                                                new_card_number=args.card_number)
            print(f"card {done.old_card_id} ({done.reason}) replaced by card {done.new_card_id}, "
                  f"number {done.new_card_number}")
            print(f"fee {format_euros(done.fee_cents)}: {format_euros(done.fee_taken_cents)} taken "
                  f"from the balance, {format_euros(done.fee_pending_cents)} pending until the next reload")
            card = await cards.card_by_id(conn, done.new_card_id)
        _print_card(card)
    return _run(settings, work)


def _print_request(request: card_requests.CardRequest) -> None:
    print(f"request {request.id}  dossier {request.dossier_number}  {request.state}: {request.label_fr}")
    if request.card_number:
        print(f"  card number {request.card_number}" + (f" (card {request.card_id})" if request.card_id else ""))
    for step in request.history:
        print(f"  {step.occurred_at:%Y-%m-%d %H:%M}  {step.from_state or '-':<13} -> {step.to_state:<13} "
              f"{step.actor}" + (f"  ({step.reason})" if step.reason else ""))


def cmd_card_requests(args, settings) -> int:
    async def work(conn) -> None:
        command = args.card_requests_command
        if command == "list":
            for r in await card_requests.list_requests(conn, state=args.state, dossier_number=args.dossier):
                print(f"{r.id:>8}  {r.dossier_number:<12} {r.state:<13} {r.updated_at:%Y-%m-%d %H:%M}  {r.label_fr}")
            return
        if command == "submit":
            async with conn.transaction():
                request = await card_requests.submit(conn, args.dossier, actor=_actor())
        elif command == "advance":
            uid = cards.parse_uid(args.uid) if args.uid else None
            async with conn.transaction():
                request = await card_requests.advance(conn, args.request_id, args.state, actor=_actor(),
                                                      reason=args.reason, card_uid=uid,
                                                      card_number=args.card_number)
        else:
            request = await card_requests.get(conn, args.request_id)
        _print_request(request)
    return _run(settings, work)


def _print_partner(p: partners.Partner) -> None:
    print(f"partner {p.id}  {p.name}  [{p.category}, {p.status}]")
    print(f"  {p.address}  ({p.latitude:.6f}, {p.longitude:.6f})")
    print("  terminals: " + (", ".join(f"{t} {s}" for t, s in p.terminals) or "none "
                             "(add one with 'hdfpay terminals add ID --partner N')"))


def cmd_partners(args, settings) -> int:
    async def work(conn) -> None:
        command = args.partners_command
        if command == "list":
            for p in await partners.list_partners(conn, category=args.category, status=args.status):
                print(f"{p.id:>6}  {p.category:<9} {p.status:<9} {p.name}  ({len(p.terminals)} terminals)")
            return
        if command == "near":
            found = await partners.partners_near(
                conn, args.latitude, args.longitude, args.radius_km * METRES_PER_KM, args.category,
                include_inactive=args.all, limit_rows=args.limit)
            for p in found:
                print(f"{p.distance_m / METRES_PER_KM:>7.2f} km  {p.id:>6}  {p.category:<9} {p.status:<9} "
                      f"{p.name}, {p.address}")
            print(f"{len(found)} partner(s) within {args.radius_km:g} km")
            return
        async with conn.transaction():
            if command == "add":
                partner = await partners.add_partner(
                    conn, name=args.name, category=args.category, address=args.address,
                    latitude=args.latitude, longitude=args.longitude, actor=_actor())
            elif command == "update":
                partner = await partners.update_partner(
                    conn, args.partner_id, actor=_actor(), name=args.name, category=args.category,
                    address=args.address, latitude=args.latitude, longitude=args.longitude)
            elif command in ("suspend", "activate", "close"):
                status = {"suspend": "SUSPENDED", "activate": "ACTIVE", "close": "CLOSED"}[command]
                partner = await partners.set_partner_status(conn, args.partner_id, status, actor=_actor())
            else:
                partner = await partners.get_partner(conn, args.partner_id)
        _print_partner(partner)
    return _run(settings, work)


def add_commands(subcommands) -> None:
    """Add `cards`, `card-requests` and `partners` to hdfpay's parser."""
    p = subcommands.add_parser("cards", help="oppose a lost, stolen or damaged card; replace a card "
                                             "(the region's fee, defective free)")
    sub = p.add_subparsers(dest="cards_command", required=True, metavar="ACTION")
    card_help = "card number (16 digits) or dossier number (that beneficiary's current card)"
    s = sub.add_parser("show", help="a card, its status and replacements")
    s.add_argument("card", help=card_help)
    s = sub.add_parser("oppose", help="irreversible opposition: the terminal answers 41 lost, "
                                      "43 stolen, 62 damaged or defective")
    s.add_argument("card", help=card_help)
    s.add_argument("--reason", required=True, choices=REASONS)
    s = sub.add_parser("requests", help="students' open requests for a new card (lost, stolen, "
                                        "damaged, or defective and posted to the region)")
    s = sub.add_parser("replace", help="a new card for the same beneficiary and wallet (rights for "
                                       "the current school year needed); the old card stays opposed")
    s.add_argument("card", help=card_help)
    s.add_argument("--uid", required=True, help="the new card's chip UID in hex (4, 7 or 10 bytes), "
                                                "from the card or the manufacturer's file")
    s.add_argument("--card-number", help="the 16 digits printed on the new card (default: generated)")
    s.add_argument("--reason", choices=REASONS,
                   help="needed when the card is still active (it is then opposed with this reason)")
    p.set_defaults(func=cmd_cards)

    p = subcommands.add_parser("card-requests", help="first-card requests: submitted, pre-validated, "
                                                     "photo checked, printed, mailed, active or rejected")
    sub = p.add_subparsers(dest="card_requests_command", required=True, metavar="ACTION")
    s = sub.add_parser("submit", help="a new request for a beneficiary without a card")
    s.add_argument("dossier", help="dossier number")
    s = sub.add_parser("advance", help="move a request to its next state, or reject it with a reason")
    s.add_argument("request_id", type=whole_number)
    s.add_argument("state", choices=STATES[1:])
    s.add_argument("--reason", help="why (required to reject: the beneficiary reads it)")
    s.add_argument("--uid", help="printed: the card's chip UID in hex")
    s.add_argument("--card-number", help="printed: the 16 digits on the card (default: generated)")
    s = sub.add_parser("show", help="a request with its history, as the beneficiary reads it")
    s.add_argument("request_id", type=whole_number)
    s = sub.add_parser("list", help="requests, newest first")
    s.add_argument("--state", choices=STATES)
    s.add_argument("--dossier", help="one beneficiary's requests")
    p.set_defaults(func=cmd_card_requests)

    p = subcommands.add_parser("partners", help="partner shops: add, update, suspend, activate, "
                                                "close, list, search near a point")
    sub = p.add_subparsers(dest="partners_command", required=True, metavar="ACTION")
    s = sub.add_parser("list", help="partners with their terminal count")
    s.add_argument("--category", choices=CATEGORIES)
    s.add_argument("--status", choices=[x.lower() for x in partners.STATUSES])
    s = sub.add_parser("show", help="a partner and its terminals")
    s.add_argument("partner_id", type=whole_number)
    s = sub.add_parser("add", help="a new ACTIVE partner (then 'hdfpay terminals add')")
    for name in ("name", "address"):
        s.add_argument(f"--{name}", required=True)
    s.add_argument("--category", required=True, choices=CATEGORIES)
    s.add_argument("--lat", dest="latitude", type=float, required=True)
    s.add_argument("--lon", dest="longitude", type=float, required=True)
    s = sub.add_parser("update", help="change a partner's name, category, address or coordinates")
    s.add_argument("partner_id", type=whole_number)
    s.add_argument("--name")
    s.add_argument("--address")
    s.add_argument("--category", choices=CATEGORIES)
    s.add_argument("--lat", dest="latitude", type=float)
    s.add_argument("--lon", dest="longitude", type=float)
    for action, what in (("suspend", "its terminals answer 58 until activated again"),
                         ("activate", "accept its terminals' sales again"),
                         ("close", "final: a closed partner is not reopened")):
        s = sub.add_parser(action, help=what)
        s.add_argument("partner_id", type=whole_number)
    s = sub.add_parser("near", help="active partners within a radius of a point, nearest first")
    s.add_argument("latitude", type=float)
    s.add_argument("longitude", type=float)
    s.add_argument("--radius-km", type=float, default=DEFAULT_SEARCH_RADIUS_KM,
                   help=f"default {DEFAULT_SEARCH_RADIUS_KM:g}, at most "
                        f"{partners.MAX_SEARCH_RADIUS_M // METRES_PER_KM}")
    s.add_argument("--category", choices=CATEGORIES)
    s.add_argument("--limit", type=whole_number, default=partners.DEFAULT_SEARCH_RESULTS_ROWS)
    s.add_argument("--all", action="store_true", help="suspended and closed partners too")
    p.set_defaults(func=cmd_partners)
