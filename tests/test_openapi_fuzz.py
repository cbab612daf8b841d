"""The operator API and its OpenAPI document agree, as schemathesis sees it: every operation,
generated and hostile requests, a region operator's token. No 5xx; only documented status codes
and content types; answers that match their schemas; what the schema refuses is refused, and
what it allows is not refused with a 400, except by the business rules listed below, which no
schema can express.

Bounded: SCHEMATHESIS_MAX_EXAMPLES_PER_OPERATION cases per operation and phase, one worker, a
fixed seed (a failure is replayed as is). Operations that end the run's own session (logout, a
password change, whose wrong current passwords lock the account and end its sessions) run
separately with a token of their own, so the main run keeps its token."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from backoffice.openapi import OPENAPI_PATH
from backoffice.operator_auth import Role
from operator_fixtures import add_test_operator

SCHEMATHESIS_MAX_EXAMPLES_PER_OPERATION = 50
SCHEMATHESIS_SEED = 14
SCHEMATHESIS_REQUEST_TIMEOUT_S = 30
SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
ENDS_THE_SESSION = ("logout", "changePassword")
# Schema-valid requests these operations refuse with 400 by a rule the schema cannot say (a
# period too long, a role with the wrong scope, an IBAN's check digits, a CSV file's lines...).
BUSINESS_RULE_400 = {
    "createAccount": "the role decides whether establishment_id or partner_id is needed",
    "setPartnerPayee": "IBAN check digits and RIB key, BIC structure (schwifty)",
    "makePayoutFiles": "the region's account: IBAN and BIC checked",
    "getPartnerSettlement": "from after to, or a period too long",
    "getVolumesReport": "from after to, or a period too long",
    "getDeclinesReport": "from after to, or a period too long",
    "getFundsReport": "from after to",
    "settle": "a day not yet closed cannot be settled",
    "advanceCardRequest": "the state each state may move to; PRINTED needs a card UID",
    "renewRights": "a dossier number's shape, a programme code",
    "renewRightsFile": "the file's encoding and shape",
    "setProgramme": "an amount in the region's range",
    "replaceCard": "a chip UID in hex, a fresh card number",
}
PHASES = "examples,coverage,fuzzing"


def _config(directory: Path) -> Path:
    lines = ["[generation]",
             # The document says it: strings are UTF-8 text without NUL (PostgreSQL's text);
             # JSON Schema cannot say "no lone surrogate", so none is generated where valid.
             "allow-x00 = false", 'codec = "utf-8"', 'database = "none"', "",
             "[[operations]]",
             f"include-operation-id = {sorted(BUSINESS_RULE_400)!r}".replace("'", '"'),
             'checks.positive_data_acceptance.expected-statuses = '
             '["2xx", "400", "401", "403", "404", "409", "422"]']
    path = directory / "schemathesis.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def _schemathesis(base_url: str, token: str, workdir: Path, *operations: str,
                        exclude: tuple[str, ...] = ()) -> tuple[int, str]:
    args = [SCHEMATHESIS, "--config-file", str(_config(workdir)), "run",
            base_url + OPENAPI_PATH, "--header", f"Authorization: Bearer {token}",
            "--checks", "all", "--phases", PHASES,
            "--max-examples", str(SCHEMATHESIS_MAX_EXAMPLES_PER_OPERATION),
            "--seed", str(SCHEMATHESIS_SEED), "--workers", "1",
            "--request-timeout", str(SCHEMATHESIS_REQUEST_TIMEOUT_S),
            "--continue-on-failure", "--output-truncate", "false", "--no-color"]
    args += [f"--include-operation-id={op}" for op in operations]
    args += [f"--exclude-operation-id={op}" for op in exclude]
    process = await asyncio.create_subprocess_exec(
        *args, cwd=workdir, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "NO_COLOR": "1"})
    output, _ = await process.communicate()
    return process.returncode, output.decode(errors="replace")


async def test_every_operation_agrees_with_the_document(server, dsn, tmp_path):
    _, token, _ = await add_test_operator(dsn, Role.REGION_OPERATOR)
    code, output = await _schemathesis(server.ops_url, token, tmp_path, exclude=ENDS_THE_SESSION)
    assert code == 0, output[-20_000:]


async def test_the_operations_that_end_the_session_agree_too(server, dsn, tmp_path):
    _, token, _ = await add_test_operator(dsn, Role.REGION_OPERATOR)
    code, output = await _schemathesis(server.ops_url, token, tmp_path, *ENDS_THE_SESSION)
    assert code == 0, output[-20_000:]
