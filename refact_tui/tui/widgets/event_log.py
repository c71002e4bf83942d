"""Tail of the workspace event log (worker, evaluation, CLI and TUI messages)."""

from __future__ import annotations

from typing import Iterable

from rich.text import Text
from textual.widgets import RichLog

from refact_tui.services.display import display_text
from refact_tui.tui.widgets import fmt
from refact_tui.tui.widgets.keyed_table import NAV_BINDINGS, matches
from store.records import EventRow

LEVEL_STYLE = {"debug": "dim", "info": "", "warning": "yellow", "error": "bold red"}
MAX_LINES = 500


class EventLog(RichLog):
    """Appends only events it has not shown yet; ``set_filter`` shows the matching ones only."""

    BINDINGS = NAV_BINDINGS

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, max_lines=MAX_LINES, wrap=False, markup=False)
        self.last_id = 0
        self.filter_text = ""
        self.entries: list[Text] = []

    def add_events(self, events: Iterable[EventRow]) -> None:
        for ev in events:
            if ev.id <= self.last_id:
                continue
            self.last_id = ev.id
            line = Text(f"{fmt.clock(ev.ts)} ", style="dim")
            line.append(f"{ev.source:<6} ", style="cyan")
            line.append(display_text(ev.message), style=LEVEL_STYLE.get(ev.level, ""))
            self.entries.append(line)
            if self._shows(line):
                self.write(line)
        del self.entries[:-MAX_LINES]

    def _shows(self, line: Text) -> bool:
        return not self.filter_text or matches((line,), self.filter_text)

    def set_filter(self, text: str) -> None:
        if text == self.filter_text:
            return
        self.filter_text = text
        self.clear()
        for line in self.entries:
            if self._shows(line):
                self.write(line)

    @property
    def visible_count(self) -> int:
        return sum(1 for line in self.entries if self._shows(line))

    @property
    def total_count(self) -> int:
        return len(self.entries)

    def action_cursor_down(self) -> None:
        self.scroll_down()

    def action_cursor_up(self) -> None:
        self.scroll_up()

    def action_scroll_top(self) -> None:
        self.scroll_home()

    def action_scroll_bottom(self) -> None:
        self.scroll_end()
