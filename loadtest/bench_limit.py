"""The machine's limit for this work (issue 16 §2): pgbench on the least a purchase can be, on the
bench's data, beside pgbench on authorize_purchase() in the same run.

The minimal debit is one statement: the card's wallet for the year debited with the balance
condition inside the UPDATE (as authorize_purchase() does it), and one journal row, a PURCHASE
transfer to a merchant's account, inserted from the UPDATE's result. No terminal, card status,
rights, window, idempotency or KSN check: what is left is the row lock, the index look-ups, the
WAL and the commit, which no implementation of the rules can avoid. The ledger stays balanced
(the wallet posts what its transfer says); each transfer carries '<tag>-<client>-<n>' so that
the database can count what pgbench did.
"""

from __future__ import annotations

from loadtest.bench_load import BENCH_AMOUNT_CENTS_MAX, BENCH_AMOUNT_CENTS_MIN, card_draw


def minimal_debit_script(tag: str, cards: int, school_year: int,
                         merchant_account_id: int) -> str:
    """pgbench's script: the load generator's card mix and amounts, one statement each."""
    return "\n".join([
        "\\set cnt :cnt + 1", *card_draw(cards, None),
        f"\\set amount random({BENCH_AMOUNT_CENTS_MIN}, {BENCH_AMOUNT_CENTS_MAX})",
        "WITH debit AS (UPDATE accounts a SET debits_posted = a.debits_posted + :amount"
        " FROM cards c JOIN wallets w ON w.beneficiary_id = c.beneficiary_id"
        f" AND w.school_year = {int(school_year)}"
        " WHERE c.uid = '\\x04'::bytea || substring(int8send(:n::bigint) FROM 3)"
        " AND a.id = w.account_id AND a.credits_posted - a.debits_posted >= :amount"
        " RETURNING a.id)"
        " INSERT INTO transfers (code, debit_account_id, credit_account_id, amount_cents,"
        " reference, created_at)"
        f" SELECT 'PURCHASE', id, {int(merchant_account_id)}, :amount,"
        f" '{tag}-' || :client_id || '-' || :cnt, now() FROM debit;", ""])
