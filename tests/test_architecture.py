"""The rooms and their import lines (pyproject.toml's import-linter contracts, ARCHITECTURE.md), and
SQL only in ledger/."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_TIMEOUT_S = 120
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")   # import-linter's command
# Rooms of the product whose Python may hold no SQL: it lives in ledger/. (The shop agent's own
# SQLite journal is another database, on the shop's PC; loadtest's baselines run raw SQL on
# purpose, to measure the server beside it.)
SQL_FREE_ROOMS = ("hdfpay", "authorizer", "backoffice", "portal", "hsm", "terminal_protocol")
SQL_ALLOWED = ("terminal_protocol/agent/",)
SQL_STATEMENT = re.compile(r"^\s*(SELECT|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|WITH\s+\w+\s+AS)\b",
                           re.IGNORECASE)


def test_the_import_contracts_are_kept():
    result = subprocess.run([LINT_IMPORTS, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                            text=True, timeout=LINT_TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_a_broken_contract_is_seen(tmp_path):
    """The check above can fail: a contract that the code breaks is reported as broken."""
    config = tmp_path / "contracts.toml"
    config.write_text('[tool.importlinter]\nroot_packages = ["hdfpay", "ledger"]\n\n'
                      '[[tool.importlinter.contracts]]\nname = "the root never imports the ledger"\n'
                      'type = "forbidden"\nsource_modules = ["hdfpay"]\nforbidden_modules = ["ledger"]\n')
    result = subprocess.run([LINT_IMPORTS, "--config", str(config)],
                            cwd=ROOT, capture_output=True, text=True, timeout=LINT_TIMEOUT_S)
    assert result.returncode != 0 and "BROKEN" in result.stdout


def sql_strings(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and SQL_STATEMENT.match(node.value):
            found.append((node.lineno, node.value.strip().splitlines()[0][:60]))
    return found


def test_sql_lives_in_the_ledger():
    outside = []
    for room in SQL_FREE_ROOMS:
        for path in sorted((ROOT / room).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative.startswith(SQL_ALLOWED):
                continue
            outside += [f"{relative}:{line}: {text}" for line, text in sql_strings(path)]
    assert outside == []


def test_the_sql_finder_finds_sql(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('x = "SELECT 1"\ny = "UPDATE terminals SET status = $2"\nz = "Selection"\n')
    assert [line for line, _ in sql_strings(sample)] == [1, 2]
