"""Wiring of a running agent from its configuration: sealed keys, journal, reader, client."""

from __future__ import annotations

import contextlib
import getpass
import os
import ssl
import sys
from pathlib import Path
from typing import AsyncIterator, Mapping

from terminal_protocol.agent.agent import TerminalAgent
from terminal_protocol.agent.agent_config import AgentConfig, AgentConfigError
from terminal_protocol.agent.local_store import LocalStore
from terminal_protocol.agent.receipt_printer import EscposFilePrinter
from terminal_protocol.agent.sealed_state import SealedStateFile
from terminal_protocol.agent.supervisor_pin import SupervisorPin
from terminal_protocol.client import TerminalClient

STATE_KEY_ENV = "HDFPAY_TERMINAL_STATE_KEY"
PASSPHRASE_ENV = "HDFPAY_TERMINAL_PASSPHRASE"
STATE_KEY_BYTES = 32


def sealed_secret(environ: Mapping[str, str] = os.environ) -> dict[str, object]:
    """What unlocks the agent's sealed files (`key=` or `passphrase=` of SealedStateFile): a raw
    key or a passphrase from the environment, or a passphrase typed at the prompt (asked once)."""
    if environ.get(STATE_KEY_ENV):
        try:
            key = bytes.fromhex(environ[STATE_KEY_ENV])
        except ValueError:
            key = b""
        if len(key) != STATE_KEY_BYTES:
            raise AgentConfigError(f"{STATE_KEY_ENV} must be {STATE_KEY_BYTES * 2} hex digits")
        return {"key": key}
    passphrase = environ.get(PASSPHRASE_ENV)
    if not passphrase:
        if not sys.stdin.isatty():
            raise AgentConfigError(f"no key for the sealed DUKPT state: set {STATE_KEY_ENV} or"
                                   f" {PASSPHRASE_ENV}, or run at a terminal to type it")
        passphrase = getpass.getpass("Phrase secrète du terminal : ")
    return {"passphrase": passphrase}


def sealed_state(config: AgentConfig, environ: Mapping[str, str] = os.environ, *,
                 path: Path | None = None) -> SealedStateFile:
    """The DUKPT state file, or another sealed file of the agent (`path`)."""
    return SealedStateFile(path or config.keys_file, **sealed_secret(environ))


def client_ssl_context(config: AgentConfig) -> ssl.SSLContext | None:
    if config.ca_file is None:
        return None
    return ssl.create_default_context(cafile=config.ca_file)


@contextlib.asynccontextmanager
async def running_agent(config: AgentConfig, *, reader=None,
                        environ: Mapping[str, str] = os.environ,
                        **agent_options) -> AsyncIterator[TerminalAgent]:
    """The agent, started (outbox delivery running) until the block exits."""
    from terminal_protocol.agent.future_keys import FutureKeyTerminal

    secret = sealed_secret(environ)
    state = SealedStateFile(config.keys_file, **secret)
    if not state.exists():
        raise AgentConfigError(f"no keys in {config.keys_file}: run 'hdfpay terminal init' first")
    if not config.supervisor_pin_file.exists():
        raise AgentConfigError(f"no supervisor PIN in {config.supervisor_pin_file}: run"
                               " 'hdfpay terminal set-pin' first")
    keys = FutureKeyTerminal.open(state)
    store = None
    try:
        store = LocalStore(config.journal_file)
        supervisor = SupervisorPin.load(SealedStateFile(config.supervisor_pin_file, **secret),
                                        store)
    except BaseException:
        if store is not None:
            store.close()
        keys.close()
        raise
    if reader is None:
        from terminal_protocol.agent.card_reader import CardReader
        reader = CardReader(config.reader)
    try:
        async with TerminalClient(config.server_url, config.terminal_id, keys,
                                  timeout_ms=config.answer_timeout_ms,
                                  ssl_context=client_ssl_context(config)) as client:
            agent = TerminalAgent(client, reader, store, max_sale_cents=config.max_sale_cents,
                                  tap_timeout_ms=config.tap_timeout_ms, supervisor=supervisor,
                                  shop_name=config.shop_name or "",
                                  metrics_dir=config.state_dir,
                                  printer=(EscposFilePrinter(config.receipt_printer)
                                           if config.receipt_printer else None),
                                  **agent_options)
            await agent.start()
            try:
                yield agent
            finally:
                await agent.stop()
    finally:
        store.close()
        keys.close()
        close = getattr(reader, "close", None)
        if close is not None:
            close()
