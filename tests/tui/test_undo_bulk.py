"""Pilot tests of issue 19's TUI part: roll forward, histories + checkout, multi-select, filter, spinner."""

from __future__ import annotations

import threading

from pilot_helpers import SIZE, make_app, opened

from refact_tui.tui.screens.confirm import ConfirmModal
from refact_tui.tui.screens.histories import HistoriesModal
from refact_tui.tui.widgets.filter_bar import FilterBar
from refact_tui.tui.widgets.queue_table import QueueTable
from store.db import open_db
from store.histories import current_history
from store.jobs import list_jobs


async def settle(app, pilot) -> None:
    await app.workers.wait_for_complete()
    await pilot.pause(0.15)
    await app.settled()


def states(root) -> dict[int, str]:
    db = open_db(root / "refact.db")
    try:
        return {j.id: j.state for j in list_jobs(db)}
    finally:
        db.close()


async def test_rollforward_confirms_what_comes_back(sample_ws, S, monkeypatch):
    calls = []
    app = make_app(sample_ws, S)
    monkeypatch.setattr(app, "run_service", lambda *a, **k: calls.append(a))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await pilot.pause(0.15)
        status = app.screen.query_one("#history-status").content.plain
        assert "1 rolled back after the head (r rolls forward)" in status
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmModal)
        assert app.screen.title_text == "Roll 'main' forward to edit 4?"
        assert "Edits 4 (1) are applied again" in app.screen.body
        assert app.screen.confirm_label == "Roll forward to edit 4" and app.screen.keep_label == "Keep"
        await pilot.press("y")
        await pilot.pause()
    assert calls == [("Roll forward", "history", "rollforward", 4)]


async def test_histories_tree_and_checkout(sample_ws, S):
    from refact_tui.services.history import fork
    from refact_tui.services.workspace import Workspace

    ws = Workspace.open(sample_ws)
    fork(ws, 2, "side")  # 'side' becomes current; main keeps its 2 queued jobs
    ws.close()
    app = make_app(sample_ws, S)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await pilot.pause(0.15)
        assert "fork of 'main' at edit 2" in app.screen.query_one("#history-status").content.plain
        await pilot.press("h")
        await settle(app, pilot)
        modal = app.screen
        assert isinstance(modal, HistoriesModal)
        table = modal.query_one("#histories-table")
        rows = [[c.plain for c in table.get_row_at(i)] for i in range(table.row_count)]
        assert rows[0][1:] == ["main", "root", "3", "3", "1", "2"]
        assert rows[1][0] == "▶" and rows[1][1:] == ["  └ side", "fork of 'main' at edit 2", "2", "2", "0", "0"]
        assert table.selected_id == 2  # the current history is selected
        table.move_cursor(row=0)
        await pilot.press("enter")
        await settle(app, pilot)
    db = open_db(sample_ws / "refact.db")
    assert current_history(db).name == "main"
    db.close()


async def test_multi_select_cancels_with_one_confirmation(sample_ws, S):
    app = make_app(sample_ws, S)
    async with opened(app) as pilot:
        table = app.screen.query_one(QueueTable)
        table.focus()
        table.move_cursor(row=2)  # job 7 (queued); space marks it and moves to job 8
        await pilot.press("space", "space")
        assert table.marked_ids == [7, 8] and table.get_row_at(2)[0].plain.startswith("●")
        await pilot.press("c")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmModal) and app.screen.title_text == "Cancel 2 jobs?"
        assert "#7 The CEO of Apple" in app.screen.body and "#8 The Pope" in app.screen.body
        await pilot.press("y")
        await settle(app, pilot)
        assert table.marked_ids == []
        # v marks a range: from job 6 (running) to job 8; the failed job 5 in it is left out of a cancel
        table.move_cursor(row=0)
        await pilot.press("space")
        table.move_cursor(row=3)
        await pilot.press("v")
        assert table.marked_ids == [6, 5, 7, 8]
        await pilot.press("x")  # remove: the running job is left out, the rest deleted after one yes
        await pilot.pause()
        assert app.screen.title_text == "Remove 3 jobs?"
        await pilot.press("y")
        await settle(app, pilot)
    assert states(sample_ws) == {1: "done", 2: "done", 3: "done", 4: "done", 6: "running"}


async def test_filter_queue_rows(sample_ws, S):
    app = make_app(sample_ws, S)
    async with opened(app) as pilot:
        table = app.screen.query_one(QueueTable)
        await pilot.press("slash", *"pope")
        await pilot.pause()
        assert table.row_count == 1 and table.selected_job_id == 8
        await pilot.press("enter")
        await pilot.pause()
        assert app.focused is table and table.border_subtitle == "filter 'pope': 1 of 4"
        await pilot.press("slash", "escape")
        await pilot.pause()
        assert table.row_count == 4 and not app.screen.query(FilterBar) and table.border_subtitle == ""


async def test_spinner_shows_while_an_action_runs(sample_ws, S, monkeypatch):
    import refact_tui.tui.app as app_module

    release = threading.Event()

    def slow(ws):
        release.wait(10)
        return 3

    real = app_module.load_service
    monkeypatch.setattr(app_module, "load_service", lambda module, func: slow if module == "history"
                        else real(module, func))
    app = make_app(sample_ws, S)
    async with opened(app) as pilot:
        app.run_service("Rollback", "history", "rollback")
        await pilot.pause(0.05)
        assert "Rollback: working…" in app.sub_title
        release.set()
        await settle(app, pilot)
        assert "working" not in app.sub_title and app.sub_title.startswith("ws")


def test_help_puts_the_current_screen_first_and_the_palette_names_keys():
    from refact_tui.tui.commands import COMMANDS
    from refact_tui.tui.screens.help import sections_for

    assert [s[0] for s in sections_for("history")][:2] == ["History", "Everywhere"]
    assert [s[0] for s in sections_for("bench")][0] == "Bench"
    helps = {c.text: c.help for c in COMMANDS}
    assert helps["Roll forward"].startswith("key r · ") and helps["Filter jobs"].startswith("key / · ")


async def test_bench_compare_two_marked_runs(sample_ws, S):
    from test_bench_screen import _store_runs

    from refact_tui.tui.screens.info import InfoModal

    _store_runs(sample_ws)
    app = make_app(sample_ws, S)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("5")
        await pilot.pause(0.2)
        await pilot.press("space", "space", "c")
        await pilot.pause()
        assert isinstance(app.screen, InfoModal) and app.screen.title_text == "Bench run 2 vs run 1"
        import io

        from rich.console import Console

        console = Console(width=200, file=io.StringIO(), record=True)
        console.print(app.screen.body)
        text = console.export_text()
        assert "+0.200" in text  # refact's efficacy 0.9 against time's 0.7


async def test_w_names_the_worker_that_holds_the_lease(sample_ws, S):
    app = make_app(sample_ws, S)
    async with opened(app) as pilot:
        await pilot.press("w")
        await pilot.pause()
        assert not app.worker_running
        notes = [n.message for n in app._notifications]
        assert any("pid 4242 on test-host" in m for m in notes), notes


def test_error_hints_name_tui_actions_not_cli_flags():
    from refact_tui.tui.errors import tui_hint

    msg = tui_hint("judge checkpoint x does not exist; pass --judge MODEL_NAME:CHECKPOINT_PATH with a local file")
    assert "--judge" not in msg and "REFACT_JUDGE" in msg
    assert "Re-optimize (o" in tui_hint("those edits differ (pick an earlier seq, or use `refact replay --reoptimize`)")
