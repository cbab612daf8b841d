"""A deterministic demo region: establishments, beneficiaries with rights, cards and a reload,
partner shops with terminals. Used by `hdfpay seed`, the demo, the tests and the benchmark.

Set-based SQL (generate_series), so 100,000 beneficiaries take seconds, not minutes; only the
year's credit goes through reload_wallet() per beneficiary, as `hdfpay reload` makes it. Most
beneficiaries are ordinary; a few, chosen by their number, exercise each decline: no rights for
the year, a lost, a stolen or a damaged card.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import asyncpg

ESTABLISHMENTS = [
    ("0590117G", "Lycée Faidherbe", "LYCEE", "Lille"),
    ("0590119J", "Lycée Gaston Berger", "LYCEE", "Lille"),
    ("0620108S", "Lycée Robespierre", "LYCEE", "Arras"),
    ("0800009A", "Lycée Louis Thuillier", "LYCEE", "Amiens"),
    ("0020031M", "Lycée Jean de La Fontaine", "LYCEE", "Château-Thierry"),
    ("0601826K", "Lycée Félix Faure", "LYCEE", "Beauvais"),
    ("0590256J", "Lycée professionnel Louis Loucheur", "LP", "Roubaix"),
    ("0620190F", "Lycée professionnel Pierre de Coubertin", "LP", "Calais"),
    ("0801853F", "Lycée professionnel Édouard Branly", "LP", "Amiens"),
    ("0595616K", "CFA régional des métiers du bâtiment", "CFA", "Lille"),
]

# Reload amounts by establishment kind: books for lycées, equipment for vocational students.
DEMO_RELOAD_CENTS_BY_KIND = {"LYCEE": 100_00, "LP": 150_00, "CFA": 150_00}

# (name, category, address, latitude, longitude)
PARTNERS = [
    ("Librairie Le Furet du Nord", "BOOKSHOP", "15 place du Général de Gaulle, 59000 Lille", 50.6365, 3.0635),
    ("Librairie Meura", "BOOKSHOP", "25 rue de Valmy, 59000 Lille", 50.6310, 3.0560),
    ("Librairie Au Pied de la Lettre", "BOOKSHOP", "6 rue de la Taillerie, 62000 Arras", 50.2920, 2.7780),
    ("Librairie du Labyrinthe", "BOOKSHOP", "4 rue des Sergents, 80000 Amiens", 49.8940, 2.2970),
    ("Librairie Le Jardin des Lettres", "BOOKSHOP", "12 rue de la Madeleine, 60000 Beauvais", 49.4300, 2.0810),
    ("Librairie Les Lisières", "BOOKSHOP", "2 rue Pierre Motte, 59100 Roubaix", 50.6900, 3.1760),
    ("Outillage Pro Nord", "EQUIPMENT", "210 avenue de Dunkerque, 59000 Lille", 50.6330, 3.0250),
    ("Équipement Hôtellerie Picardie", "EQUIPMENT", "8 rue Vulfran Warmé, 80000 Amiens", 49.8880, 2.2870),
    ("Coiffure Matériel Calaisis", "EQUIPMENT", "45 boulevard Jacquard, 62100 Calais", 50.9500, 1.8560),
    ("Bâti Outils Artois", "EQUIPMENT", "3 rue Saint-Aubert, 62000 Arras", 50.2900, 2.7750),
    # Suspended by the region: its terminals are declined with 58.
    ("Librairie Suspendue (démo)", "BOOKSHOP", "1 rue de Paris, 02400 Château-Thierry", 49.0460, 3.4030),
]
TERMINALS_PER_PARTNER = 2

LAST_NAMES = ["Martin", "Bernard", "Dubois", "Durand", "Lefebvre", "Leroy", "Moreau", "Lambert",
              "Dupont", "Fontaine", "Roussel", "Vasseur", "Delattre", "Lemaire", "Caron", "Dumont"]
FIRST_NAMES = ["Emma", "Lucas", "Léa", "Hugo", "Chloé", "Louis", "Manon", "Nathan", "Inès",
               "Enzo", "Camille", "Théo", "Sarah", "Jules", "Lina", "Adam", "Jade", "Yanis"]

# Beneficiary numbers (1-based) chosen to exercise each decline.
NO_RIGHTS_EVERY = 50          # i % 50 == 0: rights not renewed this school year (57)
OPPOSITION_EVERY = 97         # i % 97 == 1 lost (41), == 2 stolen (43), == 3 damaged (62)


@dataclass(frozen=True)
class SeedSummary:
    beneficiaries: int
    cards: int
    partners: int
    terminals: int
    funded_cents: int
    already_seeded: bool = False


def card_uid(number: int) -> bytes:
    """The demo card of beneficiary `number`: a 7-byte NXP-style UID (0x04 manufacturer byte)."""
    return bytes([0x04]) + number.to_bytes(6, "big")


def terminal_id(partner_number: int, index: int) -> str:
    return f"TERM-{partner_number:04d}-{index}"


async def seed_demo_region(conn: asyncpg.Connection, *, beneficiaries: int,
                           school_year: int) -> SeedSummary:
    """Create the region once; a second call changes nothing and says so."""
    if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM establishments)"):
        return SeedSummary(
            beneficiaries=await conn.fetchval("SELECT count(*) FROM beneficiaries"),
            cards=await conn.fetchval("SELECT count(*) FROM cards"),
            partners=await conn.fetchval("SELECT count(*) FROM partners"),
            terminals=await conn.fetchval("SELECT count(*) FROM terminals"),
            funded_cents=await conn.fetchval(
                "SELECT coalesce(sum(amount_cents), 0)::bigint FROM transfers WHERE code = 'RELOAD'"),
            already_seeded=True,
        )
    async with conn.transaction():
        await conn.executemany(
            "INSERT INTO establishments (uai, name, kind) VALUES ($1, $2 || ', ' || $4, $3)",
            ESTABLISHMENTS)
        await conn.execute(
            """
            INSERT INTO beneficiaries (dossier_number, last_name, first_name, birth_date, email,
                                       establishment_id)
            SELECT 'HDF' || lpad(i::text, 7, '0'),
                   ($2::text[])[1 + i % cardinality($2::text[])],
                   ($3::text[])[1 + (i / 7) % cardinality($3::text[])],
                   date '2007-09-01' + (i * 37) % 1460,
                   'eleve' || i || '@exemple.fr',
                   (SELECT id FROM establishments ORDER BY id
                     OFFSET i % (SELECT count(*) FROM establishments) LIMIT 1)
              FROM generate_series(1, $1::integer) AS i
            """, beneficiaries, LAST_NAMES, FIRST_NAMES)
        await conn.execute(
            """
            INSERT INTO rights (beneficiary_id, school_year, renewed_by, renewed_at, programme)
            SELECT b.id, $1, e.uai, (SELECT business_now()), default_programme(e.kind)
              FROM beneficiaries b JOIN establishments e
                ON e.id = b.establishment_id
             WHERE substr(b.dossier_number, 4)::integer % $2 <> 0
            """, school_year, NO_RIGHTS_EVERY)
        await conn.execute(
            """
            INSERT INTO cards (card_number, uid, beneficiary_id, status, opposed_at, issued_at)
            SELECT '6330' || lpad(n::text, 12, '0'),
                   decode('04' || lpad(to_hex(n), 12, '0'), 'hex'),
                   id, s.status, CASE WHEN s.status = 'ACTIVE' THEN NULL ELSE t.now END, t.now
              FROM (SELECT id, substr(dossier_number, 4)::integer AS n FROM beneficiaries) b
             CROSS JOIN (SELECT business_now() AS now) t
             CROSS JOIN LATERAL (SELECT CASE n % $1 WHEN 1 THEN 'LOST' WHEN 2 THEN 'STOLEN'
                                                   WHEN 3 THEN 'DAMAGED' ELSE 'ACTIVE' END
                                        AS status) s
            """, OPPOSITION_EVERY)
        # The wallets are opened set-based and the grown tables analysed before the per-row
        # reload_wallet() calls: the plans those calls cache for this session are then made on
        # full tables. Made on the near-empty accounts table (one page), each statement keyed on
        # accounts.id kept a sequential scan for the whole statement, and the seed was quadratic
        # (loadtest.bench measures its linearity).
        await conn.execute(
            """
            WITH todo AS (SELECT beneficiary_id,
                                 nextval(pg_get_serial_sequence('accounts', 'id')) AS account_id
                            FROM rights WHERE school_year = $1),
                 opened AS (INSERT INTO accounts (id, kind) OVERRIDING SYSTEM VALUE
                            SELECT account_id, 'WALLET' FROM todo)
            INSERT INTO wallets (beneficiary_id, school_year, account_id)
            SELECT beneficiary_id, $1, account_id FROM todo
            """, school_year)
        await conn.execute("ANALYZE accounts, wallets, beneficiaries, rights, cards")
        funded = await conn.fetchval(
            """
            SELECT coalesce(sum((reload_wallet(b.id, $1, ($2::jsonb ->> e.kind)::bigint,
                                               NULL)).credited_cents), 0)::bigint   -- the year's credit
              FROM beneficiaries b
              JOIN establishments e ON e.id = b.establishment_id
              JOIN rights r ON r.beneficiary_id = b.id AND r.school_year = $1
            """, school_year, json.dumps(DEMO_RELOAD_CENTS_BY_KIND))
        for number, (name, category, address, lat, lon) in enumerate(PARTNERS, start=1):
            status = "SUSPENDED" if "Suspendue" in name else "ACTIVE"
            partner_id = await conn.fetchval(
                """
                WITH account AS (INSERT INTO accounts (kind) VALUES ('MERCHANT_PAYABLE') RETURNING id)
                INSERT INTO partners (name, category, address, latitude, longitude, status,
                                      merchant_account_id)
                SELECT $1, $2, $3, $4, $5, $6, id FROM account RETURNING id
                """, name, category, address, lat, lon, status)
            await conn.executemany(
                "INSERT INTO terminals (id, partner_id, status) VALUES ($1, $2, $3)",
                [(terminal_id(number, index), partner_id,
                  # The last terminal of the first partner is revoked: declined with 58.
                  "REVOKED" if (number, index) == (1, TERMINALS_PER_PARTNER) else "ACTIVE")
                 for index in range(1, TERMINALS_PER_PARTNER + 1)])
        # Statistics for what the reloads grew; every other session re-plans at this commit.
        await conn.execute("ANALYZE accounts, transfers")
    return SeedSummary(beneficiaries=beneficiaries, cards=beneficiaries, partners=len(PARTNERS),
                       terminals=len(PARTNERS) * TERMINALS_PER_PARTNER, funded_cents=funded)

