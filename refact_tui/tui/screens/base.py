"""Common base of the four dashboard screens: refreshed by the app's store poller."""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlite_utils
from textual.screen import Screen

if TYPE_CHECKING:
    from refact_tui.tui.app import RefactApp


class DashboardScreen(Screen):
    """A screen that redraws itself from the read-model when the store changed."""

    @property
    def refact(self) -> "RefactApp":
        return self.app  # type: ignore[return-value]

    def refresh_from(self, db: sqlite_utils.Database, now: float) -> None:
        """Re-read what this screen shows (called on the UI thread, at most once per poll tick)."""
        raise NotImplementedError

    @property
    def ticking(self) -> bool:
        """True while the screen shows a wall clock that must advance without new writes."""
        return False

    def on_screen_resume(self) -> None:
        self.refact.request_refresh()
