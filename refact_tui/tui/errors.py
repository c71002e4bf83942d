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


# Service errors name CLI flags and commands; in the TUI the same fix is a key or a setting.
_TUI_HINTS: tuple[tuple[str, str], ...] = (
    ("pass --judge MODEL_NAME:CHECKPOINT_PATH", "set $REFACT_JUDGE=MODEL_NAME:CHECKPOINT_PATH before starting the "
     "TUI (the judge of image evaluation, i on the Metrics screen)"),
    ("(use --text-only)", "(use text evaluation: t on the Metrics screen)"),
    ("use --skip-invalid", "tick 'skip invalid rows' in the import form"),
    ("pass --format", "pick the format in the import form"),
    ("use `refact replay --reoptimize`", "use Re-optimize (o) on the History screen"),
    ("`refact replay --reoptimize`", "Re-optimize (o on the History screen)"),
    ("`refact histories`", "the histories list (h on the History screen)"),
    ("`refact history`", "the History screen (4)"),
    ("`refact queue ls`", "the Queue screen (1)"),
    ("`refact eval`", "an evaluation on the Metrics screen (3)"),
    ("`refact bench ls`", "the Bench screen (5)"),
)


def tui_hint(message: str) -> str:
    """``message`` with the CLI hints it carries replaced by the TUI action that does the same."""
    for cli, tui in _TUI_HINTS:
        message = message.replace(cli, tui)
    return message
