"""`hdfpay loadtest`'s checks after a run: the users' journal of answers reconciled with the
ledger (every approval they saw is there with its amount, nothing else moved money), and each
scenario's own check (hot card never overspent, storm sales all voided, every decline seen)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from loadtest.bench_load import first_approvable
from ledger.demo_region import card_uid
from terminal_protocol.amounts import format_euros
from terminal_protocol.response_codes import APPROVED_CODES

if TYPE_CHECKING:
    from loadtest.locust_plan import LoadRun

# Answers the ledger does not store (format error, security refusal, unavailable, malfunction):
# a retry of the same message may rightly be answered otherwise.
UNSTORED_CODES = ("30", "63", "91", "96")
# Every decline a card can cause; the decline mix must show each of them.
DECLINE_MIX_CODES = ("14", "41", "43", "51", "57", "61", "62")
HOT_CARD = first_approvable(1)[0]


def read_journal(directory: Path) -> dict[tuple[str, str], dict]:
    """(terminal, request id) → the answer the users got for it; a retry's answer must repeat
    the first stored one (checked by the users byte for byte, here again on the decoded
    fields)."""
    answers: dict[tuple[str, str], dict] = {}
    for path in sorted(directory.glob("answers-*.jsonl")):
        for line in path.read_text().splitlines():
            if not line.endswith("}"):
                continue  # a line cut by a killed process: that answer was never acted on
            entry = json.loads(line)
            if "request_id" not in entry:
                continue  # an owed or settled void or refund (approvals_journal.read_owed)
            key = (entry["terminal"], entry["request_id"])
            previous = answers.setdefault(key, entry)
            if previous["rc"] in UNSTORED_CODES:
                answers[key] = entry         # the retry's answer is the one that counts
            elif (entry["rc"] not in UNSTORED_CODES and (previous["rc"], previous["approved_cents"])
                  != (entry["rc"], entry["approved_cents"])):
                previous["conflict"] = entry
    return answers


def reconcile(answers: dict[tuple[str, str], dict],
              ledger: list[asyncpg.Record | dict]) -> tuple[str, list[str]]:
    """Every approval a terminal saw is in the ledger with its code and amount; every message of
    the ledger that moved money was seen approved, or is a sale voided in full (its answer was
    lost, so its terminal voided it). Returns the printed line and the problems."""
    problems = [f"{t} {r}: answered {a['rc']} then {a['conflict']['rc']}"
                for (t, r), a in answers.items() if "conflict" in a]
    stored = {(row["terminal_id"], row["request_id"]): row for row in ledger}
    seen = {key: a for key, a in answers.items()
            if a["rc"] in APPROVED_CODES and a["approved_cents"] > 0}
    for key, answer in seen.items():
        row = stored.get(key)
        if row is None:
            problems.append(f"{key[0]} {key[1]}: approved {answer['type']} not in the ledger")
        elif (row["response_code"], row["amount_approved_cents"]) != (answer["rc"],
                                                                       answer["approved_cents"]):
            problems.append(f"{key[0]} {key[1]}: the terminal saw {answer['rc']} "
                            f"{answer['approved_cents']}, the ledger holds "
                            f"{row['response_code']} {row['amount_approved_cents']}")
    unseen_voided = 0
    for key, row in stored.items():
        if row["amount_approved_cents"] <= 0 or key in seen:
            continue
        if row["message_type"] == "PURCHASE" and row["amount_reversed_cents"] == row["amount_approved_cents"]:
            unseen_voided += 1
        else:
            problems.append(f"{key[0]} {key[1]}: {row['message_type']} moved "
                            f"{row['amount_approved_cents']} cents, no terminal saw it approved")
    moved = sum(1 for row in stored.values() if row["amount_approved_cents"] > 0)
    line = (f"approvals reconciled: {len(seen)} approvals seen by locust, all in the ledger with "
            f"their amounts; {moved} in the ledger ({unseen_voided} whose answer was lost, voided "
            f"in full)")
    return line, problems


def print_codes(answers: dict[tuple[str, str], dict]) -> None:
    by_type: dict[str, Counter] = {}
    for answer in answers.values():
        by_type.setdefault(answer["type"], Counter())[answer["rc"]] += 1
    for message_type, codes in sorted(by_type.items()):
        print(f"{message_type} answers: " + ", ".join(f"{rc} × {n}" for rc, n in sorted(codes.items())))


async def _check_peak(run: LoadRun, conn: asyncpg.Connection, answers) -> tuple[list[str], list[str]]:
    row = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE message_type = 'PURCHASE' AND amount_approved_cents > 0) AS sales,"
        " coalesce(sum(amount_approved_cents) FILTER (WHERE message_type = 'PURCHASE'), 0)::bigint AS sold,"
        " count(*) FILTER (WHERE message_type = 'REVERSAL' AND amount_approved_cents > 0) AS voids,"
        " count(*) FILTER (WHERE message_type = 'REFUND' AND amount_approved_cents > 0) AS refunds,"
        " coalesce(sum(amount_approved_cents) FILTER (WHERE message_type <> 'PURCHASE'), 0)::bigint AS back"
        " FROM authorizations WHERE terminal_id = ANY($1::text[])", run.terminals)
    return [f"peak: {row['sales']} sales for {format_euros(row['sold'])}, {row['voids']} voids and "
            f"{row['refunds']} refunds giving back {format_euros(row['back'])}"], []


async def _check_hot_card(run: LoadRun, conn: asyncpg.Connection, answers) -> tuple[list[str], list[str]]:
    """No overspend: the card's balance is ≥ 0 and what its sales took, net of voids and refunds,
    is at most what it was funded with (in the ledger, and as the terminals saw it)."""
    row = await conn.fetchrow(
        "SELECT a.credits_posted - a.debits_posted AS balance,"
        " (SELECT coalesce(sum(amount_cents), 0) FROM transfers"
        "   WHERE code = 'RELOAD' AND credit_account_id = a.id)::bigint AS funded,"
        " (SELECT coalesce(sum(amount_approved_cents - amount_reversed_cents - amount_refunded_cents), 0)"
        "    FROM authorizations WHERE message_type = 'PURCHASE' AND wallet_account_id = a.id)::bigint AS spent,"
        " (SELECT count(*) FROM authorizations WHERE message_type = 'PURCHASE'"
        "   AND wallet_account_id = a.id AND amount_approved_cents > 0) AS approvals"
        " FROM cards c JOIN wallets w ON w.beneficiary_id = c.beneficiary_id AND w.school_year = $2"
        " JOIN accounts a ON a.id = w.account_id WHERE c.uid = $1", card_uid(HOT_CARD), run.school_year)
    seen_net = sum(a["approved_cents"] * (1 if a["type"] == "purchase" else -1)
                   for a in answers.values() if a["rc"] in APPROVED_CODES)
    problems = []
    if row["balance"] < 0 or row["spent"] > row["funded"] or seen_net > row["funded"]:
        problems.append(f"hot card OVERSPENT: funded {row['funded']}, spent {row['spent']} "
                        f"(terminals saw {seen_net}), balance {row['balance']} cents")
    if row["balance"] != row["funded"] - row["spent"]:
        problems.append(f"hot card: balance {row['balance']} ≠ funded {row['funded']} − spent "
                        f"{row['spent']} cents")
    verdict = "" if problems else " ≥ 0: no overspend"
    return [f"hot card {card_uid(HOT_CARD).hex().upper()}: funded {format_euros(row['funded'])}, "
            f"{row['approvals']} approvals taking {format_euros(row['spent'])} net of voids "
            f"(terminals saw {format_euros(seen_net)}), balance "
            f"{format_euros(row['balance'])}{verdict}"], problems


async def _check_reversal_storm(run: LoadRun, conn: asyncpg.Connection,
                                answers) -> tuple[list[str], list[str]]:
    """Every sale of the storm was voided: none still holds money."""
    row = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE message_type = 'PURCHASE' AND request_hash IS NOT NULL"
        "                          AND amount_approved_cents > 0) AS approved,"
        " count(*) FILTER (WHERE message_type = 'PURCHASE' AND request_hash IS NOT NULL"
        "                  AND amount_approved_cents > amount_reversed_cents) AS unvoided,"
        " count(*) FILTER (WHERE request_hash IS NULL) AS tombstones"
        " FROM authorizations WHERE terminal_id = ANY($1::text[])", run.terminals)
    late = sum(1 for a in answers.values() if a["type"] == "purchase" and a["rc"] == "94")
    problems = ([f"reversal storm: {row['unvoided']} approved sales not fully voided"]
                if row["unvoided"] else [])
    return [f"reversal storm: {row['approved']} approved sales, all voided in full; "
            f"{row['tombstones']} voids overtook their sale, {late} late sales declined 94"], problems


async def _check_decline_mix(run: LoadRun, conn: asyncpg.Connection,
                             answers) -> tuple[list[str], list[str]]:
    """Each decline reason a card can cause was answered at least once."""
    seen = Counter(a["rc"] for a in answers.values() if a["type"] == "purchase")
    missing = [code for code in DECLINE_MIX_CODES if not seen[code]]
    line = "decline mix: " + ", ".join(f"{code} × {seen[code]}" for code in DECLINE_MIX_CODES)
    return [line + ("" if missing else ": every decline reason seen")], (
        [f"decline mix: no answer {', '.join(missing)} (run longer or with more users)"]
        if missing else [])


SCENARIO_CHECKS = {"peak": _check_peak, "students": _check_peak, "hot-card": _check_hot_card,
                   "reversal-storm": _check_reversal_storm, "decline-mix": _check_decline_mix}
