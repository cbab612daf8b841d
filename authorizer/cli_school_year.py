"""`hdfpay` commands for school year (issue 6)."""

from __future__ import annotations


def add_commands(subcommands) -> None:
    """Add this area's subcommands to hdfpay's parser. Each sets func(args, settings) -> int and
    turns its own expected errors into a message on stderr and a non-zero code."""
