"""Hostile user text on the Queue, Live and History screens: markup is shown literally and terminal
control sequences as escapes (the sample workspace's texts are replaced through SQL)."""

from __future__ import annotations

import io
import json

from pilot_helpers import opened
from rich.console import Console

from engine.request import EditRequest
from refact_tui.tui.app import RefactApp
from refact_tui.tui.widgets.history_table import HistoryTable
from refact_tui.tui.widgets.queue_table import QueueTable
from store.db import open_db

MARKUP = "The [/] Prince [bold]of Wales"
TITLE = "King \x1b]0;pwned\x07 [/red]"
ERROR = "boom [/] \x1b[31mred\x1b[0m \x07"
SIZE = (160, 50)


def rendered(renderable) -> str:
    console = Console(width=400, file=io.StringIO(), record=True)
    console.print(renderable)
    return console.export_text()


def make_hostile(root) -> None:
    db = open_db(root / "refact.db")
    request = json.dumps(EditRequest(prompt=MARKUP, source="x [i]", target=TITLE).to_dict())
    with db.conn:
        db.execute("UPDATE jobs SET request_json = ? WHERE id IN (5, 6, 7)", [request])
        db.execute("UPDATE jobs SET error = ? WHERE id = 5", [ERROR])
        db.execute("UPDATE edits SET request_json = ?, error = ? WHERE id = 2", [request, ERROR])
        db.execute("UPDATE histories SET name = ? WHERE name = 'main'", ["main [/] \x1b[2J"])
        db.execute("INSERT INTO events (ts, source, level, message) VALUES (?, 'worker', 'error', ?)",
                   [1_767_226_199.0, f"job 6 failed: {ERROR} {MARKUP}"])
    db.close()


def assert_safe(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text


async def test_queue_live_history_show_hostile_text_literally(sample_ws, S):
    make_hostile(sample_ws)
    app = RefactApp(sample_ws, clock=lambda: S.NOW, poll_interval=0.05)
    async with opened(app, size=SIZE) as pilot:
        table = app.screen.query_one(QueueTable)
        cells = " | ".join(rendered(c) for i in range(table.row_count) for c in table.get_row_at(i))
        assert "The [/] Prince [bold]of Wales" in cells and "\\x1b]0;pwned\\x07" in cells
        assert_safe(cells)
        table.focus()
        table.move_cursor(row=1)  # the failed job, with a hostile error
        await pilot.pause(0.1)
        detail = rendered(app.screen.query_one("#job-detail-body").content)
        assert MARKUP in detail and "boom [/] \\x1b[31mred\\x1b[0m \\x07" in detail
        assert_safe(detail)

        await pilot.press("2")
        await pilot.pause(0.2)
        await app.settled()
        stats = rendered(app.screen.query_one("#step-stats").content)
        assert MARKUP[:20] in stats
        assert_safe(stats)
        log = app.screen.query_one("#event-log") if app.screen.query("#event-log") else None
        if log is not None:
            lines = "\n".join(strip.text for strip in log.lines)
            assert "boom [/]" in lines and "\\x1b[31m" in lines
            assert_safe(lines)

        await pilot.press("4")
        await pilot.pause(0.2)
        await app.settled()
        history = app.screen.query_one(HistoryTable)
        history.focus()
        history.move_cursor(row=1)
        await pilot.pause(0.2)
        row = " | ".join(rendered(c) for c in history.get_row_at(1))
        assert "The [/] Prince" in row
        summary = rendered(app.screen.query_one("#detail-summary").content)
        assert MARKUP in summary and "main [/] \\x1b[2J" in summary and "\\x1b[31m" in summary
        assert_safe(summary + row)
        assert "\x1b" not in app.sub_title and "[/]" in app.sub_title
