"""The operator API's OpenAPI document: valid OpenAPI 3.1 as served, and in step with the routes
the operator application registers (nothing undocumented, nothing documented but missing)."""

from __future__ import annotations

import copy
import types

import aiohttp
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from backoffice.areas import openapi_document
from backoffice.openapi import OPENAPI_DOCUMENT, OPENAPI_PATH, build_openapi_document
from backoffice.operator_auth import Role
from backoffice.page_session import BASE as PAGES
from backoffice.ops_app import build_ops_app

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def _operations(document: dict):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method, path, operation


@pytest.fixture(scope="module")
def ops_app():
    """The operator application as the server builds it (routes need no database to list)."""
    return build_ops_app(pool=None)


async def test_the_served_document_is_valid_openapi_3_1(server):
    async with aiohttp.ClientSession() as session:
        async with session.get(server.ops_url + OPENAPI_PATH) as reply:
            assert reply.status == 200
            document = await reply.json()
    assert document["openapi"] == "3.1.0"
    validate(document)
    assert document == server.ops_app[OPENAPI_DOCUMENT]


def test_every_route_is_documented_and_every_documented_path_is_routed(ops_app):
    # The back office's HTML pages (/bureau/) are not the API the document describes.
    registered = {(route.method.lower(), route.resource.canonical)
                  for route in ops_app.router.routes()
                  if route.method != "HEAD" and not route.resource.canonical.startswith(PAGES)}
    documented = {(method, path) for method, path, _ in _operations(openapi_document())}
    assert registered - documented == set(), "routes missing from the OpenAPI document"
    assert documented - registered == set(), "documented paths the application does not serve"


def test_each_operation_is_public_or_says_who_may_call_it():
    for method, path, operation in _operations(openapi_document()):
        if operation.get("security") == []:
            continue
        assert "x-roles" in operation, f"{method} {path}: no x-roles"
        assert {"401", "403"} <= set(operation["responses"]), f"{method} {path}: 401/403 undocumented"


def test_the_validator_catches_a_broken_document():
    """The validation above can fail: an undeclared path parameter, a dangling reference."""
    document = openapi_document()
    undeclared = copy.deepcopy(document)
    del undeclared["paths"]["/v1/ops/accounts/{login}/disable"]["post"]["parameters"]
    with pytest.raises(OpenAPIValidationError, match="login"):
        validate(undeclared)
    dangling = copy.deepcopy(document)
    dangling["paths"]["/v1/ops/me"]["get"]["responses"]["200"] = {"$ref": "#/components/responses/Nope"}
    with pytest.raises(Exception, match="/components/responses/Nope"):
        validate(dangling)


def test_two_areas_documenting_the_same_operation_are_refused():
    first = types.SimpleNamespace(__name__="first", OPENAPI_PATHS={"/v1/ops/x": {"get": {}}})
    second = types.SimpleNamespace(__name__="second", OPENAPI_PATHS={"/v1/ops/x": {"get": {}}})
    with pytest.raises(ValueError, match="already documented"):
        build_openapi_document([first, second])
    schemas = types.SimpleNamespace(__name__="third", OPENAPI_PATHS={},
                                    OPENAPI_SCHEMAS={"Error": {}})
    with pytest.raises(ValueError, match="already defined"):
        build_openapi_document([schemas])


async def test_what_the_server_refuses_the_document_refuses_too(ops_client):
    """Issue 14's disagreements, each once: the server's 400 is documented, and the schema no
    longer allows the value (id 0, school year 0000, an empty category, limit 0, a null date)."""
    document = openapi_document()

    def allows(path: str, method: str, name: str, value) -> bool:
        operation = document["paths"][path][method]
        assert "400" in operation["responses"], (method, path)
        if name == "body":
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
        else:
            schema = next(p["schema"] for p in operation["parameters"] if p["name"] == name)
        return Draft202012Validator(schema).is_valid(value)

    cases = [("/v1/ops/partners/{partner_id}", "get", "partner_id", 0, "/v1/ops/partners/0", None),
             ("/v1/ops/school-years/{school_year}/expiry", "get", "school_year", 0,
              "/v1/ops/school-years/0000/expiry", None),
             ("/v1/ops/partners", "get", "category", "", "/v1/ops/partners?category=", None),
             ("/v1/ops/partners/near", "get", "limit", 0,
              "/v1/ops/partners/near?lat=50&lon=3&limit=0", None),
             ("/v1/ops/settlement/runs", "post", "body", {"through_day": None},
              "/v1/ops/settlement/runs", {"through_day": None})]
    async with ops_client(Role.REGION_OPERATOR) as region:
        for path, method, name, value, url, body in cases:
            assert not allows(path, method, name, value), (path, name, value)
            async with region.request(method, url, json=body) as reply:
                assert reply.status == 400, (url, await reply.text())
    settle = document["paths"]["/v1/ops/settlement/runs"]["post"]["responses"]
    assert {"200", "201"} <= set(settle)
