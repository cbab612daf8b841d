"""A short fuzzing run in CI (loadtest/fuzz.py; the long one is `hdfpay fuzz --messages N`), and
the kept corpus of interesting inputs replayed against the codec."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.fuzz import FuzzOptions, check_codec, passed, run_fuzz_against

from conftest import CROWD_TERMINALS

CI_FUZZ_MESSAGES = 2_000
CI_FUZZ_TERMINALS = 4
CORPUS = Path(__file__).parent / "fuzz_corpus"


@pytest.mark.parametrize("path", sorted(CORPUS.iterdir()), ids=lambda p: p.name)
def test_the_corpus_is_refused_cleanly_by_the_codec(path):
    """Each input is refused with a ProtocolError, never another exception; a wrong-MAC input is
    a valid body (the server refuses its MAC)."""
    decodes, crash = check_codec(path.read_bytes())
    assert crash is None and decodes == ("wrong_mac" in path.name)


async def test_a_short_fuzzing_run_breaks_nothing(server, keys_for, dsn, tmp_path):
    keys = {t: keys_for(t) for t in CROWD_TERMINALS[:CI_FUZZ_TERMINALS]}
    results = await run_fuzz_against(server.url, keys, FuzzOptions(
        messages=CI_FUZZ_MESSAGES, output=str(tmp_path / "fuzz.json"),
        corpus=str(tmp_path / "corpus")), dsn)
    assert passed(results), results["crash_samples"]
    assert results["messages"] == CI_FUZZ_MESSAGES and results["valid_messages"] > 0
    assert results["ledger_moves_cents"]["PURCHASE"] > 0     # the valid ones did move money
