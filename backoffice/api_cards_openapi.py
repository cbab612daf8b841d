"""The OpenAPI 3.1 description of backoffice/api_cards.py's routes (cards, first-card requests,
partners), kept apart so that each module stays small. api_cards re-exports OPENAPI_PATHS and
OPENAPI_SCHEMAS, which backoffice.openapi merges into the served document."""

from __future__ import annotations

from backoffice.openapi import integer_path_parameter, operation, path_parameter, schema_ref
from backoffice.operator_auth import Role
from backoffice.ops_requests import MAX_ID
from ledger import card_requests, cards, partners

CARD_PATH = "/v1/ops/cards/{card}"
REQUESTS_PATH = "/v1/ops/card-requests"
PARTNERS_PATH = "/v1/ops/partners"
DEFAULT_SEARCH_RADIUS_M = 10_000

_REGION, _AUDITOR, _STAFF, _PARTNER = (Role.REGION_OPERATOR.value, Role.AUDITOR.value,
                                      Role.ESTABLISHMENT_STAFF.value, Role.PARTNER.value)
_STR, _NUM, _INT = {"type": "string"}, {"type": "number"}, {"type": "integer"}
_TIME, _NULL_STR, _NULL_INT = ({"type": "string", "format": "date-time"}, {"type": ["string", "null"]},
                               {"type": ["integer", "null"]})
_REASON = {"enum": [r.lower() for r in cards.OPPOSITION_REASONS] + list(cards.OPPOSITION_REASONS)}
_CARD = path_parameter("card", "card number (16 digits), or dossier number for that "
                       "beneficiary's current card", "^[0-9A-Za-z]{6,20}$")
_REQUEST_ID = integer_path_parameter("request_id", "the card request's id", 1, MAX_ID)
_PARTNER_ID = integer_path_parameter("partner_id", "the partner's id", 1, MAX_ID)


def _QUERY(name: str, schema: dict, text: str, required: bool = False) -> dict:  # noqa: N802
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": text}


# A card UID's one canonical form, the terminal protocol's: upper-case hex of 4, 7 or 10 bytes
# (a UID in a request may be in either case, with spaces or colons).
_UID_HEX = {"type": "string", "pattern": "^([0-9A-F]{8}|[0-9A-F]{14}|[0-9A-F]{20})$"}


def _object(**properties) -> dict:
    return {"type": "object", "properties": properties}


def _wrapped(key: str, schema: str, many: bool = False) -> dict:
    ref = schema_ref(schema)
    return _object(**{key: {"type": "array", "items": ref} if many else ref})


# What the ledger stores (partners' CHECKs, after btrim of the name): the schema says so too.
PARTNER_NAME_MAX_CHARS, PARTNER_ADDRESS_MAX_CHARS = 200, 300
_CATEGORY = {"enum": list(partners.CATEGORIES)}
_LATITUDE = {"type": "number", "minimum": -90, "maximum": 90}
_LONGITUDE = {"type": "number", "minimum": -180, "maximum": 180}
_PARTNER_PROPERTIES = {"name": {"type": "string", "pattern": "[^ ]",
                                "maxLength": PARTNER_NAME_MAX_CHARS},
                       "category": _CATEGORY, "address": {
                           "type": "string", "pattern": "[^ ]",
                           "maxLength": PARTNER_ADDRESS_MAX_CHARS}, "latitude": _LATITUDE,
                       "longitude": _LONGITUDE}
OPENAPI_SCHEMAS = {
    "Card": _object(id=_INT, card_number=_STR, uid_hex=_UID_HEX, beneficiary_id=_INT,
                    dossier_number=_STR, status={"enum": ["ACTIVE", *cards.OPPOSITION_REASONS]},
                    opposed_at={"type": ["string", "null"], "format": "date-time"},
                    issued_at=_TIME, replaced_by_card_id=_NULL_INT, replaces_card_id=_NULL_INT),
    "CardReplacement": _object(old_card_id=_INT, new_card_id=_INT, new_card_number=_STR,
                               reason=_STR, school_year=_INT, fee_cents=_INT,
                               fee_taken_cents=_INT, fee_pending_cents=_INT),
    "CardRequestStep": _object(from_state=_NULL_STR, to_state=_STR, label_fr=_STR, actor=_STR,
                               reason=_NULL_STR, occurred_at=_TIME),
    "CardRequest": _object(id=_INT, beneficiary_id=_INT, dossier_number=_STR, establishment_id=_INT,
                           state={"enum": list(card_requests.STATES)}, label_fr=_STR,
                           rejection_reason=_NULL_STR, card_number=_NULL_STR, card_id=_NULL_INT,
                           submitted_at=_TIME, updated_at=_TIME,
                           history={"type": "array", "items": schema_ref("CardRequestStep")}),
    "PartnerShop": _object(id=_INT, **_PARTNER_PROPERTIES, status={"enum": list(partners.STATUSES)},
                           terminals={"type": "array", "items": {
                               "type": "array", "items": _STR, "minItems": 2, "maxItems": 2}}),
    "NearbyPartner": _object(id=_INT, **_PARTNER_PROPERTIES, status=_STR, distance_m=_NUM),
}
_EDIT = ("BadRequest", "NotFound", "Conflict", "TooLarge")
OPENAPI_PATHS = {
    CARD_PATH: {"get": operation("getCard", "A card, its status and replacements.",
                                  roles=(_REGION, _AUDITOR), errors=("NotFound",),
                                  parameters=[_CARD], ok_schema=_wrapped("card", "Card"))},
    CARD_PATH + "/opposition": {"post": operation(
        "opposeCard", "Irreversible opposition: the terminal answers 41 lost, 43 stolen, 62 "
        "damaged or defective.", roles=(_REGION,), errors=_EDIT, parameters=[_CARD],
        body={"type": "object", "required": ["reason"], "properties": {"reason": _REASON}},
        ok_schema=_wrapped("card", "Card"))},
    CARD_PATH + "/replacement": {"post": operation(
        "replaceCard", "A new card for the same beneficiary and wallet (rights for the current "
        "school year needed). Lost, stolen, damaged: the region's replacement fee from the "
        "balance, the rest pending until the next reload; defective: free.", roles=(_REGION,),
        ok_status="201", errors=_EDIT, parameters=[_CARD],
        body={"type": "object", "required": ["uid"], "properties": {
            "uid": {"type": "string", "description": "the new card's chip UID in hex"},
            "card_number": {"type": "string", "pattern": "^[0-9]{16}$"}, "reason": _REASON}},
        ok_schema=_wrapped("replacement", "CardReplacement"))},
    REQUESTS_PATH: {
        "post": operation("submitCardRequest", "A first-card request for a beneficiary without "
                          "a card.", roles=(_REGION,), ok_status="201", errors=_EDIT,
                          body={"type": "object", "required": ["dossier_number"],
                                "properties": {"dossier_number": _STR}},
                          ok_schema=_wrapped("card_request", "CardRequest")),
        "get": operation("listCardRequests", "Requests, newest first (staff: their "
                         "establishment's).", roles=(_REGION, _AUDITOR, _STAFF),
                         parameters=[_QUERY("state", {"enum": list(card_requests.STATES)},
                                            "one state"),
                                     _QUERY("dossier_number", _STR, "one beneficiary")],
                         ok_schema=_wrapped("card_requests", "CardRequest", many=True))},
    REQUESTS_PATH + "/{request_id}": {"get": operation(
        "getCardRequest", "A request with its history and French labels.",
        roles=(_REGION, _AUDITOR, _STAFF), errors=("NotFound",), parameters=[_REQUEST_ID],
        ok_schema=_wrapped("card_request", "CardRequest"))},
    REQUESTS_PATH + "/{request_id}/transitions": {"post": operation(
        "advanceCardRequest", "Move a request (staff: pre-validate or reject their own "
        "students' submitted requests). PRINTED needs card_uid; REJECTED a reason.",
        roles=(_REGION, _STAFF), errors=_EDIT, parameters=[_REQUEST_ID],
        body={"type": "object", "required": ["state"], "properties": {
            "state": {"enum": list(card_requests.STATES[1:])}, "reason": _STR,
            "card_uid": _STR, "card_number": {"type": "string", "pattern": "^[0-9]{16}$"}}},
        ok_schema=_wrapped("card_request", "CardRequest"))},
    PARTNERS_PATH: {
        "get": operation("listPartners", "Partners with their terminals.", roles=(_REGION, _AUDITOR),
                         errors=("BadRequest",), parameters=[
                             _QUERY("category", _CATEGORY, "BOOKSHOP or EQUIPMENT"),
                             _QUERY("status", {"enum": list(partners.STATUSES)},
                                    "ACTIVE, SUSPENDED or CLOSED")],
                         ok_schema=_wrapped("partners", "PartnerShop", many=True)),
        "post": operation("addPartner", "A new ACTIVE partner with its merchant account.",
                          roles=(_REGION,), ok_status="201", errors=_EDIT,
                          body={"type": "object", "required": list(_PARTNER_PROPERTIES),
                                "properties": _PARTNER_PROPERTIES},
                          ok_schema=_wrapped("partner", "PartnerShop"))},
    PARTNERS_PATH + "/near": {"get": operation(
        "partnersNear", "Active partners within a radius, nearest first.", roles=(),
        errors=("BadRequest",), parameters=[
            _QUERY("lat", _LATITUDE, "latitude", True), _QUERY("lon", _LONGITUDE, "longitude", True),
            _QUERY("radius_m", {"type": "number", "exclusiveMinimum": 0,
                                "maximum": partners.MAX_SEARCH_RADIUS_M},
                   f"metres (default {DEFAULT_SEARCH_RADIUS_M})"),
            _QUERY("category", _CATEGORY, "BOOKSHOP or EQUIPMENT"),
            _QUERY("limit", {"type": "integer", "minimum": 1,
                             "maximum": partners.MAX_SEARCH_RESULTS_ROWS}, "partners, at most")],
        ok_schema=_wrapped("partners", "NearbyPartner", many=True))},
    PARTNERS_PATH + "/{partner_id}": {
        "get": operation("getPartner", "A partner and its terminals (a partner: its own).",
                         roles=(_REGION, _AUDITOR, _PARTNER), errors=("NotFound",),
                         parameters=[_PARTNER_ID], ok_schema=_wrapped("partner", "PartnerShop")),
        "patch": operation("updatePartner", "Change fields; those absent keep their value.",
                           roles=(_REGION,), errors=_EDIT, parameters=[_PARTNER_ID],
                           body={"type": "object", "properties": _PARTNER_PROPERTIES,
                                 "additionalProperties": False},
                           ok_schema=_wrapped("partner", "PartnerShop"))},
    PARTNERS_PATH + "/{partner_id}/status": {"post": operation(
        "setPartnerStatus", "SUSPENDED (its terminals answer 58), ACTIVE, or CLOSED (final).",
        roles=(_REGION,), errors=_EDIT, parameters=[_PARTNER_ID],
        body={"type": "object", "required": ["status"],
              "properties": {"status": {"enum": list(partners.STATUSES)}}},
        ok_schema=_wrapped("partner", "PartnerShop"))},
}
