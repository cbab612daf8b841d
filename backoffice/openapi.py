"""The operator API's OpenAPI 3.1 document, assembled from each area module's OPENAPI_PATHS (and
optional OPENAPI_SCHEMAS) plus the shared parts here: the bearerAuth scheme, the Error schema and
the error responses. Served at GET /v1/ops/openapi.json; tests/test_openapi.py validates it and
checks it against the routes the application registers. The areas import this module's
helpers; backoffice.areas imports the areas.

Areas may build their path items with operation() below, or write them by hand.
"""

from __future__ import annotations

import copy
from types import ModuleType

from aiohttp import web

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1.0.0"
OPENAPI_PATH = "/v1/ops/openapi.json"
OPENAPI_DOCUMENT = web.AppKey("openapi_document", dict)

# Shared error responses, by name, with their status: `errors=("NotFound",)` in operation().
ERROR_RESPONSES = {
    "BadRequest": ("400", "The request is malformed or breaks a rule; `error` says which."),
    "Unauthorized": ("401", "No valid, unexpired bearer token."),
    "Forbidden": ("403", "The caller's role may not do this (or a password change is due)."),
    "NotFound": ("404", "No such resource."),
    "Conflict": ("409", "The resource's state does not allow it."),
    "TooLarge": ("413", "The body is above the limit."),
    "Unavailable": ("503", "The database is busy or unreachable: retry shortly."),
}
ERROR_SCHEMA = {"type": "object", "required": ["error"], "additionalProperties": False,
                "properties": {"error": {"type": "string", "description": "What went wrong."}}}


def schema_ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def operation(operation_id: str, summary: str, *, roles: tuple[str, ...] | None,
              ok_status: str = "200", ok_description: str = "Done.", ok_schema: dict | None = None,
              body: dict | None = None, errors: tuple[str, ...] = (),
              parameters: list[dict] | None = None) -> dict:
    """One operation. roles=None: no authentication; otherwise the roles allowed (empty: any
    authenticated operator); 401 and 403 are then documented, plus `errors`. What the listener
    answers whatever the handler does is documented too: 400 for parameters or a body it cannot
    read, 404 for a path its route's pattern does not match, 413 for a body above the limit."""
    responses: dict = {ok_status: {"description": ok_description}}
    if ok_schema is not None:
        responses[ok_status]["content"] = json_content(ok_schema)
    if roles is not None:
        errors = ("Unauthorized", "Forbidden", *errors)
    if parameters or body is not None:
        errors = (*errors, "BadRequest")
    if any(parameter["in"] == "path" for parameter in parameters or ()):
        errors = (*errors, "NotFound")
    if body is not None:
        errors = (*errors, "TooLarge")
    for name in dict.fromkeys((*errors, "Unavailable")):
        status, _ = ERROR_RESPONSES[name]
        responses[status] = {"$ref": f"#/components/responses/{name}"}
    item: dict = {"operationId": operation_id, "summary": summary, "responses": responses}
    if roles is None:
        item["security"] = []
    else:
        item["x-roles"] = list(roles)
        item["description"] = ("Roles: " + ", ".join(roles) + "." if roles
                               else "Any authenticated operator.")
    if body is not None:
        item["requestBody"] = {"required": True, "content": json_content(body)}
    if parameters:
        item["parameters"] = parameters
    return item


def path_parameter(name: str, description: str, pattern: str | None = None) -> dict:
    schema = {"type": "string"} | ({"pattern": pattern} if pattern else {})
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": schema}


def integer_path_parameter(name: str, description: str, minimum: int, maximum: int) -> dict:
    """A path parameter written in ASCII digits, from minimum to maximum (others: 400)."""
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "integer", "minimum": minimum, "maximum": maximum}}


def build_openapi_document(modules: list[ModuleType]) -> dict:
    """The whole document from the areas' declarations (backoffice.areas lists them); a path,
    method or schema defined by two areas is an error."""
    paths: dict[str, dict] = {}
    schemas: dict[str, dict] = {"Error": ERROR_SCHEMA}
    for module in modules:
        for path, item in module.OPENAPI_PATHS.items():
            clash = set(paths.get(path, {})) & set(item)
            if clash:
                raise ValueError(f"{module.__name__}: {path} {sorted(clash)} is already documented")
            paths.setdefault(path, {}).update(copy.deepcopy(item))
        for name, schema in getattr(module, "OPENAPI_SCHEMAS", {}).items():
            if name in schemas:
                raise ValueError(f"{module.__name__}: schema {name} is already defined")
            schemas[name] = copy.deepcopy(schema)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "hdfpay operator API", "version": API_VERSION,
                 "description": "Region operations of the carte Génération #HDF: accounts, "
                                "school year, cards, partners and settlement. Log in with POST "
                                "/v1/ops/login and send the token as `Authorization: Bearer "
                                "<token>`. Errors are JSON: {\"error\": \"...\"}. Strings, in "
                                "bodies, paths and queries, are UTF-8 text without NUL "
                                "characters (others: 400); a query parameter is given once."},
        "security": [{"bearerAuth": []}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "A session token from POST /v1/ops/login; it expires, and ends "
                               "at logout, password change elsewhere, or account disabling."}},
            "schemas": schemas,
            "responses": {name: {"description": description,
                                 "content": json_content(schema_ref("Error"))}
                          for name, (_, description) in ERROR_RESPONSES.items()},
        },
    }
