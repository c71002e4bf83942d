"""Which errors the user can act on, shared by the CLI and the TUI so both show the same one line."""

from __future__ import annotations

from engine.errors import EngineError
from engine.methods.refact.hparams import HParamsError
from engine.request import RequestError
from refact_tui.services.workspace import WorkspaceError
from store.db import StoreError

# Every error a service raises on bad input (ImportFileError, EvaluationError, LeaseHeldError, ...
# are subclasses); each message is already one line naming the problem and what to do.
USER_ERRORS: tuple[type[BaseException], ...] = (EngineError, HParamsError, RequestError, StoreError, WorkspaceError)


def user_message(exc: BaseException) -> str | None:
    """The one-line message of a user-facing error (whitespace folded), or None for anything else."""
    if not isinstance(exc, USER_ERRORS):
        return None
    return " ".join(str(exc).split()) or type(exc).__name__
