"""The agent's configuration and its local store: clear errors, and one agent per store."""

from __future__ import annotations

import sqlite3

import pytest

from terminal_protocol.agent.agent_config import AgentConfig, AgentConfigError
from terminal_protocol.agent.local_store import LocalStore, StoreLocked
from terminal_protocol.agent.journal import Journal, SentMessage
from terminal_protocol.agent.outbox import (
    OUTBOX_MAX_RETRY_MS, OUTBOX_OVERDUE_ATTEMPTS, Outbox, retry_delay_ms,
)

GOOD = 'server_url = "https://auth.example:8443"\nterminal_id = "P1-T1"\nstate_dir = "/var/lib/t"\n'


def _load(tmp_path, text: str, environ: dict | None = None) -> AgentConfig:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return AgentConfig.load(path, environ or {})


def test_a_minimal_file_gets_the_defaults(tmp_path):
    config = _load(tmp_path, GOOD)
    assert (config.answer_timeout_ms, config.max_sale_cents, config.reader) == (5000, 300_00, None)
    assert config.journal_file.name == "journal.sqlite"


def test_the_environment_overrides_the_file(tmp_path):
    config = _load(tmp_path, GOOD, {"HDFPAY_TERMINAL_READER": "Virtual PCD 00 01",
                                    "HDFPAY_TERMINAL_ANSWER_TIMEOUT_MS": "2500"})
    assert (config.reader, config.answer_timeout_ms) == ("Virtual PCD 00 01", 2500)


@pytest.mark.parametrize("text, environ, message", [
    ('terminal_id = "T"\nstate_dir = "/x"\n', {}, "server_url is required"),
    (GOOD + "answer_timeout_ms = 10\n", {}, "answer_timeout_ms (" ),
    (GOOD, {"HDFPAY_TERMINAL_MAX_SALE_CENTS": "lots"}, "HDFPAY_TERMINAL_MAX_SALE_CENTS"),
    (GOOD + "colour = 1\n", {}, "unknown key(s) colour"),
    (GOOD.replace("https://auth.example:8443", "http://auth.example"), {}, "must use https"),
    ("server_url = [", {}, "agent.toml"),
])
def test_bad_settings_are_named(tmp_path, text, environ, message):
    with pytest.raises(AgentConfigError, match=None) as error:
        _load(tmp_path, text, environ)
    assert message in str(error.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(AgentConfigError, match="not found"):
        AgentConfig.load(tmp_path / "absent.toml", {})


def test_a_second_agent_cannot_open_the_same_store(tmp_path):
    first = LocalStore(tmp_path / "journal.sqlite")
    try:
        with pytest.raises(StoreLocked):
            LocalStore(tmp_path / "journal.sqlite")
    finally:
        first.close()
    LocalStore(tmp_path / "journal.sqlite").close()         # free again once closed


def test_retries_back_off_to_a_ceiling():
    delays = [retry_delay_ms(attempt) for attempt in range(12)]
    assert delays[:3] == [1000, 2000, 4000]
    assert delays == sorted(delays) and max(delays) == OUTBOX_MAX_RETRY_MS


def test_money_owed_is_never_given_up_only_flagged_overdue(tmp_path):
    store = LocalStore(tmp_path / "journal.sqlite")
    try:
        outbox = Outbox(store, Journal(store))
        outbox.enqueue(SentMessage("reversal-0001", "reversal", b"{}", original_request_id="p-1"))
        for attempt in range(OUTBOX_OVERDUE_ATTEMPTS * 2):
            outbox.postpone("reversal-0001", "ClientConnectorError")
        assert [item[0] for item in outbox.pending()] == ["reversal-0001"]
        assert outbox.overdue() == 1 and outbox.counts() == {"pending": 1}
    finally:
        store.close()


def test_a_store_of_schema_1_gains_the_till_reference_and_the_answer(tmp_path):
    path = tmp_path / "journal.sqlite"
    LocalStore(path).close()
    old = sqlite3.connect(path)
    old.executescript("DROP INDEX messages_by_till_reference; DROP TABLE supervisor_pin_failures;"
                      " ALTER TABLE messages DROP COLUMN till_reference;"
                      " ALTER TABLE messages DROP COLUMN answer; PRAGMA user_version=1;")
    old.close()
    store = LocalStore(path)
    try:
        columns = {row[1] for row in store.db.execute("PRAGMA table_info(messages)")}
        assert {"till_reference", "answer"} <= columns
        assert store.db.execute("SELECT count(*) FROM supervisor_pin_failures").fetchone()[0] == 0
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == 3
    finally:
        store.close()
