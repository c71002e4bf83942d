"""What screens and palette commands may ask of the app: a Protocol, so they type against it without
importing ``tui.app`` (which imports them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

import sqlite_utils
from textual.worker import Worker


class AppAPI(Protocol):
    """The part of ``RefactApp`` that screens and commands use."""

    workspace_root: Path
    clock: Callable[[], float]

    @property
    def read_db(self) -> sqlite_utils.Database | None: ...

    def request_refresh(self) -> None: ...

    def confirm(self, title: str, body: str, on_yes: Callable[[], None], yes: str = ..., no: str = ...) -> None: ...

    def run_service(self, label: str, module: str, func: str, *args: Any,
                    on_result: Callable[[Any], None] | None = None, **kwargs: Any) -> Worker: ...

    def run_many(self, label: str, module: str, func: str, calls: list[tuple[Any, ...]]) -> Worker: ...

    def start_evaluation(self, space: str, history: bool) -> Worker: ...

    def run_command(self, mode: str | None, action: str) -> None: ...
