"""Turning any exception from a service call into the one line an error modal shows."""

from __future__ import annotations

import sqlite3


def one_line(exc: BaseException) -> str:
    """A single line naming the problem: the message of a known error, else its type and text."""
    from engine.errors import EngineError
    from engine.hparams import HParamsError
    from engine.request import RequestError

    known: tuple[type[BaseException], ...] = (EngineError, HParamsError, RequestError)
    try:
        from store.db import StoreError

        known += (StoreError,)
    except ImportError:  # store not importable: fall back to the generic form
        pass
    text = " ".join(str(exc).split())
    if isinstance(exc, known) or _is_named_error(exc):
        return text or type(exc).__name__
    if isinstance(exc, sqlite3.OperationalError):
        return f"workspace database error: {text}; try again, or check no other process holds it"
    if isinstance(exc, FileNotFoundError):
        return f"file not found: {exc.filename or text}; check the path"
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or text}; check the workspace is writable"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_named_error(exc: BaseException) -> bool:
    # Service-layer errors (WorkspaceError, LeaseHeldError, ImportFileError, ...) already carry a
    # user-facing one-line message; they are recognised by name so this module imports none of them.
    return type(exc).__name__.endswith(("WorkspaceError", "LeaseHeldError", "ImportFileError", "HistoryError",
                                        "ExportError", "EvaluationError", "QueueError"))
