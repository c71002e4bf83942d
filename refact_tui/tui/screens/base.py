"""Common base of the four dashboard screens: refreshed by the app's store poller."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import sqlite_utils
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer

if TYPE_CHECKING:
    from refact_tui.tui.app import RefactApp


W = TypeVar("W", bound=Widget)
COMPACT_BELOW = 110  # terminal columns


def titled(widget: W, title: str) -> W:
    """``widget`` with a border title (for use inside compose)."""
    widget.border_title = title
    return widget


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
        self._fit_footer()
        self.refact.request_refresh()

    def on_resize(self) -> None:
        self._fit_footer()

    def _fit_footer(self) -> None:
        # Below 110 columns the spaced-out footer of the Queue and History screens runs out of room.
        for footer in self.query(Footer):
            footer.compact = self.app.size.width < COMPACT_BELOW
