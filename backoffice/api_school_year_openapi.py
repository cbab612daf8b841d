"""OpenAPI 3.1 path items and schemas of the school year's operator API (backoffice.api_school_year)."""

from __future__ import annotations

from backoffice.openapi import (integer_path_parameter, json_content, operation, path_parameter,
                                schema_ref)

BASE = "/v1/ops/school-years/{school_year}"
TRUE_WORDS, FALSE_WORDS = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})
_REGION, _STAFF, _AUDITOR = "region_operator", "establishment_staff", "auditor"
MIN_SCHOOL_YEAR, MAX_SCHOOL_YEAR = 2000, 2100    # the school years the API names
_YEAR = integer_path_parameter("school_year", "the school year's first year, e.g. 2026 for "
                               "2026-2027", MIN_SCHOOL_YEAR, MAX_SCHOOL_YEAR)
_PROGRAMME = path_parameter("programme", "a programme code, e.g. BOOKS or EQUIPMENT",
                            "^[A-Z][A-Z0-9_]{1,31}$")
_INT, _STR, _BOOL = {"type": "integer"}, {"type": "string"}, {"type": "boolean"}


def _object(**properties) -> dict:
    return {"type": "object", "properties": properties}


OPENAPI_SCHEMAS = {
    "RenewalReport": _object(
        school_year=_INT, file_sha256=_STR, lines=_INT, renewed=_INT, already_renewed=_INT,
        applied=_BOOL, ok=_BOOL,
        errors={"type": "array", "items": _object(
            line=_INT, dossier={"type": ["string", "null"]}, message=_STR,
            code={"enum": ["empty_line", "too_many_fields", "bad_dossier", "wrong_year",
                           "bad_programme", "duplicate", "unknown_dossier", "other_establishment"]})}),
    "BulkReloadStatus": _object(
        school_year=_INT, in_progress=_BOOL, last_error={"type": ["string", "null"]},
        run={"oneOf": [{"type": "null"}, _object(
            id=_INT, school_year=_INT, started_by=_STR, started_at=_STR,
            finished_at={"type": ["string", "null"]}, finished=_BOOL,
            amounts={"type": "object", "additionalProperties": _INT}, beneficiaries_total=_INT,
            after_beneficiary_id=_INT, chunks_done=_INT, beneficiaries_seen=_INT,
            wallets_credited=_INT, wallets_opened=_INT, without_amount=_INT, credited_cents=_INT,
            fee_recovered_cents=_INT)]}),
}

_RENEWAL_FILE = operation(
    "renewRightsFile", "Renew the students of a CSV file: checked whole, applied only without error.",
    roles=(_REGION, _STAFF), ok_schema=_object(report=schema_ref("RenewalReport")),
    ok_description="The report (dry run, or applied).", errors=("BadRequest", "Conflict", "TooLarge"),
    parameters=[_YEAR,
                {"name": "dry_run", "in": "query", "required": False,
                 "description": "true (the default): check only; false: apply if the file has no error",
                 "schema": {"enum": sorted(TRUE_WORDS | FALSE_WORDS)}},
                {"name": "establishment", "in": "query", "required": False,
                 "description": "region operators: the UAI to act for (staff always act for theirs)",
                 "schema": {"type": "string"}}])
_RENEWAL_FILE["requestBody"] = {"required": True, "description": (
    "UTF-8 or Windows-1252 CSV, ',' or ';' separated: dossier number, then optionally the school "
    "year and a programme; an optional header whose first cell mentions 'dossier'."),
    "content": {"text/csv": {"schema": {"type": "string"}}}}
_RENEWAL_FILE["responses"]["422"] = {"description": "The file has errors (by line): nothing changed.",
                                     "content": json_content(_object(report=schema_ref("RenewalReport")))}

OPENAPI_PATHS = {
    f"{BASE}/renewals": {
        "post": operation(
            "renewRights", "Renew one student's rights for the school year (open from the renewal opening, 20 June unless 'hdfpay rules' moved it).",
            roles=(_REGION, _STAFF), ok_status="201", ok_description="Renewed (200: already was).",
            body=_object(dossier_number=_STR, programme=_STR),
            ok_schema=_object(renewal=_object(dossier_number=_STR, school_year=_INT,
                                              programme=_STR, already_renewed=_BOOL)),
            errors=("BadRequest", "NotFound", "Conflict"), parameters=[_YEAR]),
        "get": operation(
            "renewalCounts", "Students and renewals by establishment (staff: their own).",
            roles=(_REGION, _STAFF, _AUDITOR), errors=("BadRequest",), parameters=[_YEAR],
            ok_schema=_object(school_year=_INT, renewal_opens=_STR, establishments={
                "type": "array", "items": _object(uai=_STR, name=_STR, kind=_STR, students=_INT,
                                                  renewed=_INT)}))},
    f"{BASE}/renewals/file": {"post": _RENEWAL_FILE},
    f"{BASE}/programmes": {"get": operation(
        "listProgrammes", "Reload amounts by programme, and programmes of renewed students with none.",
        roles=(_REGION, _AUDITOR), errors=("BadRequest",), parameters=[_YEAR],
        ok_schema=_object(school_year=_INT,
                          programmes={"type": "array", "items": _object(programme=_STR, amount_cents=_INT)},
                          missing={"type": "array", "items": _object(programme=_STR, beneficiaries=_INT)}))},
    f"{BASE}/programmes/{{programme}}": {"put": operation(
        "setProgramme", "Set a programme's reload amount for the school year (audited).",
        roles=(_REGION,), body=_object(amount_cents=_INT), errors=("BadRequest",),
        parameters=[_YEAR, _PROGRAMME],
        ok_schema=_object(school_year=_INT, programme=_STR, amount_cents=_INT))},
    f"{BASE}/bulk-reload": {
        "post": operation(
            "startBulkReload", "Start, or resume after a crash, the reload of every beneficiary "
            "with rights (each once per year, pending fees first); it runs in the background.",
            roles=(_REGION,), ok_status="202", ok_description="Running; follow it with GET.",
            ok_schema=schema_ref("BulkReloadStatus"), errors=("BadRequest", "Conflict"),
            parameters=[_YEAR]),
        "get": operation(
            "bulkReloadStatus", "The school year's last bulk reload run and its progress.",
            roles=(_REGION, _AUDITOR), ok_schema=schema_ref("BulkReloadStatus"),
            errors=("BadRequest",), parameters=[_YEAR])},
    f"{BASE}/expiry": {
        "post": operation(
            "runExpiry", "Move the school year's remaining balances to expired funds (from 1 May "
            "00:00 Europe/Paris; idempotent).", roles=(_REGION,), errors=("BadRequest", "Conflict"),
            parameters=[_YEAR],
            ok_schema=_object(expiry=_object(school_year=_INT, wallets_expired=_INT, expired_cents=_INT))),
        "get": operation(
            "expiryStatus", "When the school year's wallets close, and the expiry runs so far.",
            roles=(_REGION, _AUDITOR), errors=("BadRequest",), parameters=[_YEAR],
            ok_schema=_object(school_year=_INT, closes_at=_STR, closed=_BOOL, runs={
                "type": "array", "items": _object(at=_STR, actor=_STR, wallets_expired=_INT,
                                                  expired_cents=_INT)}))},
}
