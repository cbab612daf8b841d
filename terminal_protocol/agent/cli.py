"""`hdfpay terminal …`: install the keys, then run the agent for a cashier or a till program."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import signal
import sys

from aiohttp import web

from terminal_protocol.agent.agent_config import AgentConfig, AgentConfigError
from terminal_protocol.agent.agent_log import log_to_state_dir
from terminal_protocol.agent.runtime import running_agent, sealed_state
from terminal_protocol.agent.supervisor_pin import PinFormatError, check_pin_format, write_pin

CONFIG_ENV = "HDFPAY_TERMINAL_CONFIG"
TRANSPORT_KEY_ENV = "HDFPAY_TERMINAL_TRANSPORT_KEY"
SUPERVISOR_PIN_ENV = "HDFPAY_TERMINAL_SUPERVISOR_PIN"


def add_terminal_commands(subcommands) -> None:
    parser = subcommands.add_parser(
        "terminal", help="the shop's terminal agent (PC/SC reader, cashier screen, till API)")
    actions = parser.add_subparsers(dest="terminal_action", required=True)
    for name, text in (("init", "install the terminal's key from its TR-31 block (sealed on disk)"),
                       ("set-pin", "set or change the supervisor's PIN (refunds, late voids, close)"),
                       ("run", "the cashier's screen in this terminal"),
                       ("serve", "the local HTTP API for the shop's till software")):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("--config", default=os.environ.get(CONFIG_ENV),
                            help=f"TOML configuration file (default: ${CONFIG_ENV})")
        if name == "init":
            action.add_argument("--key-block", required=True, help="TR-31 block from 'hdfpay terminals add'")
            action.add_argument("--initial-key-id", help="16 hex digits, if the block does not carry it")
            action.add_argument("--replace", action="store_true", help="replace the installed key (rotation)")
    parser.set_defaults(func=lambda args, settings: run_terminal_command(args))


def run_terminal_command(args: argparse.Namespace) -> int:
    config = AgentConfig.load(args.config)
    if args.terminal_action == "init":
        return _init(config, args)
    if args.terminal_action == "set-pin":
        return _set_pin(config)
    log_to_state_dir(config.state_dir)      # the screen is the cashier's: logs go to a file
    if args.terminal_action == "run":
        from terminal_protocol.agent.cashier_screen import CashierScreen

        if not sys.stdin.isatty():
            raise AgentConfigError("'terminal run' is the cashier's screen: run it in a terminal"
                                   " ('terminal serve' is for a till program)")

        async def screen() -> None:
            async with running_agent(config) as agent:
                await CashierScreen(agent, config.terminal_id).run_async()
        asyncio.run(screen())
        return 0
    asyncio.run(_serve(config))
    return 0


def _init(config: AgentConfig, args: argparse.Namespace) -> int:
    from terminal_protocol.agent.future_keys import FutureKeyTerminal

    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    transport_hex = os.environ.get(TRANSPORT_KEY_ENV) or (
        getpass.getpass("Transport key (hex): ") if sys.stdin.isatty() else "")
    try:
        transport_key = bytes.fromhex(transport_hex.strip())
        initial_key_id = bytes.fromhex(args.initial_key_id) if args.initial_key_id else None
    except ValueError:
        raise AgentConfigError("the transport key and the initial key id are hex") from None
    if not transport_key:
        raise AgentConfigError(f"no transport key: set {TRANSPORT_KEY_ENV} or type it at the prompt")
    with FutureKeyTerminal.install_from_key_block(
            sealed_state(config), args.key_block, transport_key, initial_key_id,
            replace=args.replace) as keys:
        pass
    print(f"terminal {config.terminal_id}: key {keys.initial_key_id.hex().upper()} installed,"
          f" sealed in {config.keys_file}")
    if not config.supervisor_pin_file.exists():      # a key rotation keeps the PIN
        return _set_pin(config)
    return 0


def _set_pin(config: AgentConfig) -> int:
    """The supervisor's PIN from the environment, or typed twice at the prompt."""
    pin = os.environ.get(SUPERVISOR_PIN_ENV)
    if not pin:
        if not sys.stdin.isatty():
            raise AgentConfigError(f"no supervisor PIN: set {SUPERVISOR_PIN_ENV} or type it at"
                                   " the prompt")
        pin = getpass.getpass("Code superviseur (4 à 8 chiffres) : ")
        if getpass.getpass("Code superviseur, encore : ") != pin:
            raise AgentConfigError("the two PINs typed differ: nothing changed")
    try:
        write_pin(sealed_state(config, path=config.supervisor_pin_file), check_pin_format(pin))
    except PinFormatError as exc:
        raise AgentConfigError(str(exc)) from None
    print(f"terminal {config.terminal_id}: supervisor PIN set, sealed in"
          f" {config.supervisor_pin_file}")
    return 0


async def _serve(config: AgentConfig) -> None:
    from terminal_protocol.agent.till_api import TILL_API_HOST, TOKEN_FILE_NAME, till_app, till_token

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with running_agent(config) as agent:
        runner = web.AppRunner(till_app(agent, till_token(config.state_dir)))
        await runner.setup()
        site = web.TCPSite(runner, TILL_API_HOST, config.till_api_port)
        await site.start()
        print(f"till API on http://{TILL_API_HOST}:{config.till_api_port}/v1/ (token in"
              f" {config.state_dir / TOKEN_FILE_NAME})", flush=True)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
