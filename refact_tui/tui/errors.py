"""Turning any exception from a service call into the one line an error modal shows."""

from __future__ import annotations

import sqlite3


def one_line(exc: BaseException) -> str:
    """A single line naming the problem: the message of a known error, else its type and text."""
    from refact_tui.services.errors import user_message

    message = user_message(exc)
    if message is not None:
        return message
    text = " ".join(str(exc).split())
    if isinstance(exc, sqlite3.OperationalError):
        return f"workspace database error: {text}; try again, or check no other process holds it"
    if isinstance(exc, FileNotFoundError):
        return f"file not found: {exc.filename or text}; check the path"
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or text}; check the workspace is writable"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
