"""Tail of the workspace event log (worker, evaluation, CLI and TUI messages)."""

from __future__ import annotations

from typing import Iterable

from rich.text import Text
from textual.widgets import RichLog

from store.records import EventRow
from refact_tui.services.display import display_text
from refact_tui.tui.widgets import fmt

LEVEL_STYLE = {"debug": "dim", "info": "", "warning": "yellow", "error": "bold red"}


class EventLog(RichLog):
    """Appends only events it has not shown yet."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, max_lines=500, wrap=False, markup=False)
        self.last_id = 0

    def add_events(self, events: Iterable[EventRow]) -> None:
        for ev in events:
            if ev.id <= self.last_id:
                continue
            self.last_id = ev.id
            line = Text(f"{fmt.clock(ev.ts)} ", style="dim")
            line.append(f"{ev.source:<6} ", style="cyan")
            line.append(display_text(ev.message), style=LEVEL_STYLE.get(ev.level, ""))
            self.write(line)
