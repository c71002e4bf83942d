"""Common base of the four dashboard screens: refreshed by the app's store poller."""

from __future__ import annotations

from typing import Any, TypeVar

import sqlite_utils
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer

from refact_tui.services.display import display_text
from refact_tui.tui.api import AppAPI
from refact_tui.tui.widgets.filter_bar import FilterBar

W = TypeVar("W", bound=Widget)


def titled(widget: W, title: str) -> W:
    """``widget`` with a border title (for use inside compose)."""
    widget.border_title = title
    return widget


class DashboardScreen(Screen):
    """A screen that redraws itself from the read-model when the store changed."""

    # Writes of other processes redraw this screen at most this often (its own actions at once).
    MIN_REDRAW_S = 1.0
    drawn_at = 0.0

    @property
    def refact(self) -> AppAPI:
        return self.app  # type: ignore[return-value]

    def read(self, db: sqlite_utils.Database, now: float) -> Any:
        """Read what this screen shows from the store. Runs on a reader thread (the app's poll), one
        read at a time: it may look at the screen's plain attributes, never at its widgets."""
        raise NotImplementedError

    def draw(self, data: Any) -> None:
        """Show what ``read`` returned (UI thread)."""
        raise NotImplementedError

    @property
    def ticking(self) -> bool:
        """True while the screen shows a wall clock that must advance without new writes."""
        return False

    def filter_target(self) -> Widget | None:
        """The table (or log) that `/` filters on this screen; None: nothing to filter."""
        return None

    def action_filter(self) -> None:
        target = self.filter_target()
        if target is None:
            self.notify("Nothing to filter on this screen.", severity="warning")
            return
        bars = self.query(FilterBar)
        bar = bars.first() if bars else FilterBar(getattr(target, "filter_text", ""))
        if not bars:
            self.mount(bar, before=self.query_one(Footer))
        bar.focus()

    def on_filter_bar_applied(self, event: FilterBar.Applied) -> None:
        target = self.filter_target()
        if target is None:
            return
        target.set_filter(event.text)  # type: ignore[attr-defined]
        self.show_filter_count()
        if event.done:
            if not event.text:
                for bar in self.query(FilterBar):
                    bar.remove()
            target.focus()

    def show_filter_count(self) -> None:
        """'filter "x": 3 of 10' under the filtered widget (cleared without a filter)."""
        target = self.filter_target()
        text = getattr(target, "filter_text", "")
        if target is None:
            return
        if not text:
            target.border_subtitle = ""
            return
        shown, total = getattr(target, "visible_count", None), getattr(target, "total_count", None)
        count = f": {shown} of {total}" if shown is not None else ""
        target.border_subtitle = display_text(f"filter '{text}'{count}")

    def on_screen_resume(self) -> None:
        self._fit_footer()
        self.refact.request_refresh()

    def on_resize(self) -> None:
        self._fit_footer()

    def _fit_footer(self) -> None:
        # The palette's own footer entry is off (ctrl+p still works; help lists it), so `? Help` and
        # `q Quit` stay at 80 columns. -narrow / -short let app.tcss fit the panels into 80x24.
        width, height = self.app.size
        for footer in self.query(Footer):
            # Always compact: Footer rebuilds its keys at every screen switch and focus change, and a
            # non-compact footer restyles each key then (most of a screen switch's time).
            footer.compact = True
        self.set_class(width < 100, "-narrow")
        self.set_class(height < 32, "-short")
