"""The operator API's areas, each a module with its routes (add_routes) and their OpenAPI
declarations (OPENAPI_PATHS, OPENAPI_SCHEMAS): a new area is added here and nowhere else."""

from __future__ import annotations

from types import ModuleType

from backoffice import api_cards, api_operators, api_school_year, api_settlement
from backoffice.openapi import build_openapi_document

AREAS: tuple[ModuleType, ...] = (api_operators, api_school_year, api_cards, api_settlement)


def openapi_document() -> dict:
    """The whole operator API's document."""
    return build_openapi_document(list(AREAS))
