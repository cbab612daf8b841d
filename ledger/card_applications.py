"""Online first-card applications (migrations/0017_card_applications.sql): "Créer un compte" with
the identity, the e-mail and the consent to the programme's rules, then "Poursuivre ma demande"
(address, establishment, photo), then sending it, when the applicant becomes a beneficiary whose
first-card request the establishment and the region move on (card_requests.py).

The campaign's dates are the ledger's (first_card_campaign_year.sql). The account's identifier
(DEM and the application number) and its provisional password go by e-mail, queued in the same
transaction as the account, so neither is lost nor sent for an account that does not exist.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import asyncpg
from argon2 import PasswordHasher

from ledger.cards import Conflict, Invalid, refusals
from ledger.mail_outbox import enqueue
from ledger.passwords import DEFAULT_HASHER, hash_password, provisional_password
from ledger.students import StudentAccountError

# The programme's rules the applicant reads and accepts: what the consent is recorded against.
RULES_VERSION = "reglement-2026-1"
APPLICANT_AGE_MIN_YEARS = 13            # a lycée's youngest pupils
APPLICANT_AGE_MAX_YEARS = 30            # apprentices, the oldest
NAME_MAX_CHARS = 100
EMAIL_MAX_CHARS = 254
ADDRESS_LINE_MAX_CHARS = 200
TOWN_MAX_CHARS = 100
EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
POSTCODE_PATTERN = re.compile(r"^[0-9]{5}$")
APPLICANT_ID_PREFIX = "DEM"
APPLICANT_ID_PATTERN = re.compile(rf"^{APPLICANT_ID_PREFIX}[0-9]{{7}}$")


def applicant_identifier(application_id: int) -> str:
    return f"{APPLICANT_ID_PREFIX}{application_id:07d}"


@dataclass(frozen=True)
class Establishment:
    id: int
    name: str
    kind: str


@dataclass(frozen=True)
class Application:
    id: int
    identifier: str
    school_year: int
    first_name: str
    last_name: str
    address_line: str | None
    address_complement: str | None
    mailbox_name: str | None
    postcode: str | None
    town: str | None
    establishment_id: int | None
    establishment_name: str | None
    photo_file: str | None
    photo_width_px: int | None
    photo_height_px: int | None
    submitted_at: dt.datetime | None
    beneficiary_id: int | None
    dossier_number: str | None

    @property
    def complete(self) -> bool:
        return None not in (self.address_line, self.postcode, self.town, self.establishment_id,
                            self.photo_file)


async def campaign(conn: asyncpg.Connection) -> tuple[int | None, dt.date]:
    """The school year applications are for now (None: closed), and the next opening day."""
    row = await conn.fetchrow(
        "SELECT first_card_campaign_year(business_now()) AS year,"
        " (first_card_requests_open_at(school_year_of(business_now()) + 1)"
        "   AT TIME ZONE business_time_zone())::date AS opens")
    return row["year"], row["opens"]


async def establishments_for_applicants(conn: asyncpg.Connection) -> list[Establishment]:
    """The lycées and vocational lycées (LP) of the region, by name: whom the card is for."""
    rows = await conn.fetch("SELECT id, name, kind FROM establishments WHERE kind IN ('LYCEE', 'LP')"
                            " ORDER BY name, id")
    return [Establishment(**dict(r)) for r in rows]


def _clean(text: str, max_chars: int, what: str) -> str:
    value = " ".join(text.split())
    if not 1 <= len(value) <= max_chars:
        raise StudentAccountError(f"{what} : de 1 à {max_chars} caractères")
    return value


async def create_application(conn: asyncpg.Connection, *, last_name: str, first_name: str,
                             birth_date: dt.date, email: str, consent: bool, portal_url: str,
                             hasher: PasswordHasher = DEFAULT_HASHER) -> int:
    """The application and its account; the identifier and the provisional password are mailed."""
    if not consent:
        raise StudentAccountError("Lisez le règlement du dispositif et donnez votre consentement")
    last_name = _clean(last_name, NAME_MAX_CHARS, "Nom")
    first_name = _clean(first_name, NAME_MAX_CHARS, "Prénom")
    email = email.strip()
    if len(email) > EMAIL_MAX_CHARS or not EMAIL_PATTERN.match(email):
        raise StudentAccountError("Adresse e-mail invalide : l'identifiant et le mot de passe y "
                                  "seront envoyés")
    password = provisional_password()
    password_hash = await hash_password(hasher, password)
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT first_card_campaign_year(business_now()) AS year,"
            " (business_now() AT TIME ZONE business_time_zone())::date AS today")
        if row["year"] is None:
            raise StudentAccountError("Les demandes de première carte sont fermées en ce moment")
        age_years = (row["today"] - birth_date).days // 365.25
        if not APPLICANT_AGE_MIN_YEARS <= age_years <= APPLICANT_AGE_MAX_YEARS:
            raise StudentAccountError("Date de naissance : la carte est pour les lycéens et les "
                                      "apprentis (de 13 à 30 ans)")
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM card_applications WHERE"
                               " lower(email) = lower($1) AND school_year = $2)", email, row["year"]):
            raise StudentAccountError("Une demande existe déjà avec cette adresse e-mail cette "
                                      "année : identifiez-vous, ou utilisez « Mot de passe oublié »")
        application_id = await conn.fetchval(
            "INSERT INTO card_applications (school_year, last_name, first_name, birth_date, email,"
            " rules_version, consented_at, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, business_now(), business_now()) RETURNING id",
            row["year"], last_name, first_name, birth_date, email, RULES_VERSION)
        await conn.execute("INSERT INTO student_accounts (application_id, password_hash, created_at)"
                           " VALUES ($1, $2, business_now())", application_id, password_hash)
        await enqueue(conn, email, "Votre compte Génération #HDF est créé",
                      _account_mail(first_name, applicant_identifier(application_id), password,
                                    portal_url), "account_created")
    return application_id


def _account_mail(first_name: str, identifier: str, password: str, portal_url: str) -> str:
    return (f"Bonjour {first_name},\n\n"
            "Votre compte Génération #HDF est créé. Pour poursuivre votre demande de carte :\n"
            f"  identifiant : {identifier}\n"
            f"  mot de passe provisoire : {password}\n"
            f"Accéder à mon compte Génération #HDF : {portal_url}/connexion\n"
            "Le mot de passe provisoire est à remplacer dès la première connexion.\n\n"
            "Besoin d'aide ? 0 800 026 080 (gratuit, du lundi au vendredi de 8 h à 18 h),"
            " beneficiaire@hautsdefrance.fr\nRégion Hauts-de-France\n")


async def get_application(conn: asyncpg.Connection, application_id: int) -> Application:
    row = await conn.fetchrow(
        "SELECT a.id, a.school_year, a.first_name, a.last_name, a.address_line,"
        " a.address_complement, a.mailbox_name, a.postcode, a.town, a.establishment_id,"
        " e.name AS establishment_name, a.photo_file, a.photo_width_px, a.photo_height_px,"
        " a.submitted_at, a.beneficiary_id, b.dossier_number FROM card_applications a"
        " LEFT JOIN establishments e ON e.id = a.establishment_id"
        " LEFT JOIN beneficiaries b ON b.id = a.beneficiary_id WHERE a.id = $1", application_id)
    return Application(identifier=applicant_identifier(row["id"]), **dict(row))


async def save_address(conn: asyncpg.Connection, application_id: int, *, address_line: str,
                       address_complement: str, mailbox_name: str, postcode: str, town: str,
                       establishment_id: int) -> None:
    """Where the card is mailed, and the establishment; only before the application is sent."""
    values = {
        "address_line": _clean(address_line, ADDRESS_LINE_MAX_CHARS, "Adresse"),
        "address_complement": " ".join(address_complement.split())[:ADDRESS_LINE_MAX_CHARS] or None,
        "mailbox_name": " ".join(mailbox_name.split())[:NAME_MAX_CHARS] or None,
        "town": _clean(town, TOWN_MAX_CHARS, "Commune"),
    }
    if not POSTCODE_PATTERN.match(postcode.strip()):
        raise StudentAccountError("Code postal : 5 chiffres")
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM establishments WHERE id = $1"
                               " AND kind IN ('LYCEE', 'LP'))", establishment_id):
        raise StudentAccountError("Choisissez votre établissement dans la liste")
    updated = await conn.execute(
        "UPDATE card_applications SET address_line = $2, address_complement = $3,"
        " mailbox_name = $4, postcode = $5, town = $6, establishment_id = $7"
        " WHERE id = $1 AND submitted_at IS NULL", application_id, values["address_line"],
        values["address_complement"], values["mailbox_name"], postcode.strip(), values["town"],
        establishment_id)
    if updated != "UPDATE 1":
        raise StudentAccountError("Votre demande est déjà envoyée : elle ne se modifie plus")


async def save_photo(conn: asyncpg.Connection, application_id: int, *, photo_file: str,
                     size_bytes: int, width_px: int, height_px: int) -> str | None:
    """Record the photo checked and stored by the caller; returns the file it replaces."""
    async with conn.transaction():
        old = await conn.fetchrow("SELECT photo_file, submitted_at FROM card_applications"
                                  " WHERE id = $1 FOR UPDATE", application_id)
        if old["submitted_at"] is not None:
            raise StudentAccountError("Votre demande est déjà envoyée : elle ne se modifie plus")
        await conn.execute("UPDATE card_applications SET photo_file = $2, photo_bytes = $3,"
                           " photo_width_px = $4, photo_height_px = $5 WHERE id = $1",
                           application_id, photo_file, size_bytes, width_px, height_px)
    return old["photo_file"]


async def submit_application(conn: asyncpg.Connection, application_id: int, *, actor: str) -> int:
    """Send the complete application: returns the first-card request's id."""
    try:
        with refusals():
            return await conn.fetchval("SELECT (submit_card_application($1, $2)).id",
                                       application_id, actor)
    except (Invalid, Conflict):
        raise StudentAccountError("Demande incomplète ou déjà envoyée : vérifiez chaque étape"
                                  ) from None


@dataclass(frozen=True)
class RequestPhoto:
    file_name: str          # under the photo folder (HDFPAY_PHOTO_DIR), never served by name
    width_px: int
    height_px: int


async def photo_for_request(conn: asyncpg.Connection, request_id: int) -> RequestPhoto | None:
    """The photo sent with the application that became this first-card request (None: no
    application online, or its photo already purged)."""
    row = await conn.fetchrow(
        "SELECT a.photo_file AS file_name, a.photo_width_px AS width_px,"
        " a.photo_height_px AS height_px FROM card_requests r"
        " JOIN card_applications a ON a.beneficiary_id = r.beneficiary_id"
        " WHERE r.id = $1 AND a.photo_file IS NOT NULL ORDER BY a.id DESC LIMIT 1", request_id)
    return None if row is None else RequestPhoto(**dict(row))
