"""Who is calling the operator API, and may they (issue 6). Interface fixed for every area;
the implementation is being written."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import asyncpg
from aiohttp import web

POOL = web.AppKey("pool", asyncpg.Pool)


class Role(enum.StrEnum):
    REGION_OPERATOR = "region_operator"        # everything the region runs
    ESTABLISHMENT_STAFF = "establishment_staff"  # rights of their own establishment's students
    PARTNER = "partner"                        # their own shops' settlement and batches
    AUDITOR = "auditor"                        # read-only, everything


@dataclass(frozen=True)
class Operator:
    id: int
    login: str
    role: Role
    establishment_id: int | None = None
    partner_id: int | None = None

    @property
    def actor(self) -> str:
        """How the audit trail names this person."""
        return f"{self.role.value}:{self.login}"


def require(request: web.Request, *roles: Role) -> Operator:
    """The authenticated caller if their role is one of `roles`: otherwise 401 (no valid, unexpired
    token) or 403 (wrong role), as JSON errors."""
    raise NotImplementedError
