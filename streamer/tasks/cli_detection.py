"""Subcommands of ``streamer`` (placeholder, filled in by the task's module)."""
from __future__ import annotations


def add_commands(commands) -> None:
    """Add this module's subcommands to the ``streamer`` parser."""
