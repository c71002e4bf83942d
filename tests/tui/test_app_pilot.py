"""Pilot tests of every TUI action on the deterministic sample workspace (a private copy each)."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager

import pytest
from pilot_helpers import SIZE, make_app, opened, text_of
from worker_helpers import jobs_at as jobs

from refact_tui.tui.screens.confirm import ConfirmModal
from refact_tui.tui.screens.error import ErrorModal
from refact_tui.tui.screens.help import HelpScreen
from refact_tui.tui.widgets.loss_plot import LossPlot, PTargetPlot
from refact_tui.tui.widgets.queue_table import QueueTable
from store.db import open_db
from store.jobs import get_job
from store.steps import StepWriter


async def settle(app, pilot) -> None:
    """Let thread workers finish and the next poll redraw."""
    from textual.worker import WorkerFailed

    try:
        await app.workers.wait_for_complete()
    except WorkerFailed:  # the app shows it in an error modal; the test checks that
        pass
    await pilot.pause(0.15)
    await app.settled()  # the store read the action caused (on a reader thread) has been drawn


@asynccontextmanager
async def on_screen(app, key: str):
    """Run ``app`` in a 120x40 test terminal, switch screens with ``key`` and let it draw."""
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(key)
        await pilot.pause(0.15)
        await app.settled()
        yield pilot


async def select_row(pilot, table, row: int) -> None:
    await pilot.app.settled()  # the first store read lands on a reader thread: wait for its rows
    table.focus()
    table.move_cursor(row=row)
    await pilot.pause()


async def test_queue_screen_lists_jobs_and_shows_failed_error(sample_ws, S):
    app = make_app(sample_ws, S)
    async with opened(app) as pilot:
        table = app.screen.query_one(QueueTable)
        assert [table.get_row_at(i)[2].plain for i in range(table.row_count)] == ["running", "failed", "queued", "queued"]
        await select_row(pilot, table, 1)
        assert table.selected_job_id == 5
        assert S.FAILED_ERROR[:40] in text_of(app.screen.query_one("#job-detail-body"))


async def test_add_edit_form_validates_then_queues(sample_ws, S):
    app = make_app(sample_ws, S)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("a")
        await pilot.pause()
        await pilot.click("#f-prompt")
        await pilot.press(*"The Queen")
        app.screen.query_one("#f-source").value = "Elizabeth II"
        await pilot.press("ctrl+s")  # target missing: the form stays open with the reason
        await pilot.pause()
        assert "target is empty" in text_of(app.screen.query_one("#form-error"))
        app.screen.query_one("#f-target").value = "Charles III"
        app.screen.query_one("#f-layer").value = "99"
        await pilot.press("ctrl+s")  # the service refuses a layer the 12-layer encoder does not have
        await settle(app, pilot)
        assert isinstance(app.screen, ErrorModal) and "layer 99 is out of range" in app.screen.message
        await pilot.press("escape", "a")
        await pilot.pause()
        for key, value in {"prompt": "The Queen", "source": "Elizabeth II", "target": "Charles III",
                           "layer": "1", "max_steps": "30"}.items():
            app.screen.query_one(f"#f-{key}").value = value
        await pilot.press("ctrl+s")
        await settle(app, pilot)
        new = [j for j in jobs(sample_ws) if j.request.prompt == "The Queen"]
        assert len(new) == 1 and new[0].state == "queued" and new[0].request.target == "Charles III"
        assert new[0].hparams.max_steps == 30
        table = app.screen.query_one(QueueTable)
        assert table.row_count == 5


async def test_import_file_queues_every_request(sample_ws, S, tmp_path):
    src = tmp_path / "edits.jsonl"
    rows = [{"prompt": "The king of Spain", "source": "Juan Carlos", "target": "Felipe VI"},
            {"prompt": "The Dalai Lama", "source": "a monk", "target": "Tenzin Gyatso"}]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    app = make_app(sample_ws, S)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("i")
        await pilot.pause()
        app.screen.query_one("#import-path").value = str(tmp_path / "missing.csv")
        await pilot.press("enter")
        await pilot.pause()
        assert "no file at" in text_of(app.screen.query_one("#form-error"))
        app.screen.query_one("#import-path").value = str(src)
        await pilot.press("enter")
        await settle(app, pilot)
    prompts = [j.request.prompt for j in jobs(sample_ws) if j.state == "queued"]
    assert prompts[-2:] == ["The king of Spain", "The Dalai Lama"]


async def test_move_down_then_up_reorders_queued_jobs(sample_ws, S):
    app = make_app(sample_ws, S)
    async with opened(app) as pilot:
        table = app.screen.query_one(QueueTable)
        await select_row(pilot, table, 2)  # job 7, first queued
        await pilot.press("d")
        await settle(app, pilot)
        assert [j.id for j in jobs(sample_ws) if j.state == "queued"] == [8, 7]
        assert table.selected_job_id == 7  # the cursor follows the job
        await pilot.press("u")
        await settle(app, pilot)
        assert [j.id for j in jobs(sample_ws) if j.state == "queued"] == [7, 8]


async def test_cancel_asks_first_and_cancels_only_on_yes(sample_ws, S):
    app = make_app(sample_ws, S)
    async with opened(app) as pilot:
        table = app.screen.query_one(QueueTable)
        await select_row(pilot, table, 3)  # job 8
        await pilot.press("c")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmModal) and "job #8" in app.screen.title_text
        await pilot.press("n")
        await settle(app, pilot)
        assert {j.id: j.state for j in jobs(sample_ws)}[8] == "queued"
        await pilot.press("c", "y")
        await settle(app, pilot)
        assert {j.id: j.state for j in jobs(sample_ws)}[8] == "cancelled"


async def test_retry_shows_the_error_and_requeues(sample_ws, S):
    app = make_app(sample_ws, S)
    async with opened(app) as pilot:
        await select_row(pilot, app.screen.query_one(QueueTable), 1)  # job 5, failed
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmModal) and S.FAILED_ERROR in app.screen.body
        await pilot.press("y")
        await settle(app, pilot)
    assert {j.id: j.state for j in jobs(sample_ws)}[5] == "queued"


async def test_live_screen_follows_steps_written_by_another_connection(sample_ws, S):
    app = make_app(sample_ws, S)
    async with on_screen(app, "2") as pilot:
        loss, ptgt = app.screen.query_one(LossPlot), app.screen.query_one(PTargetPlot)
        assert loss.xs == list(range(S.RUNNING_STEPS)) and ptgt.threshold == 0.9
        stats = text_of(app.screen.query_one("#step-stats"))
        assert f"{S.RUNNING_STEPS} / 40" in stats and "14.0s" in stats  # step counter and ETA
        writer = StepWriter(sample_ws / "refact.db", 6, 1)  # what a `refact run` elsewhere does
        for i in range(S.RUNNING_STEPS, S.RUNNING_STEPS + 5):
            writer.add(S.curve(i, 40, 5))
        writer.close()
        await pilot.pause(0.2)
        assert loss.xs == list(range(S.RUNNING_STEPS + 5))
        assert ptgt.ys[-1] == pytest.approx(S.curve(S.RUNNING_STEPS + 4, 40, 5).p_target)
        assert f"{S.RUNNING_STEPS + 5} / 40" in text_of(app.screen.query_one("#step-stats"))


async def test_live_cancel_requests_stop_of_running_job(sample_ws, S):
    app = make_app(sample_ws, S)
    async with on_screen(app, "2") as pilot:
        await pilot.press("c", "y")
        await settle(app, pilot)
    db = open_db(sample_ws / "refact.db")
    assert get_job(db, 6).cancel_requested
    db.close()


async def test_metrics_screen_panels(sample_ws, S):
    app = make_app(sample_ws, S)
    async with on_screen(app, "3"):
        eff = app.screen.query_one("#metric-efficacy")
        assert "0.8000" in text_of(eff.query_one("#values"))
        assert eff.query_one("#progress").display and eff.query_one("#progress").progress == 62.5
        assert eff.query_one("#spark-text").data == [0.6, 0.7, 0.8]
        assert not app.screen.query_one("#metric-f1").query_one("#progress").display


async def test_history_detail_and_grid_preview(sample_ws, S):
    app = make_app(sample_ws, S)
    async with on_screen(app, "4") as pilot:
        table = app.screen.query_one("#history-table")
        assert table.row_count == 4
        await select_row(pilot, table, 1)
        assert app.screen.shown_edit == 2
        assert app.screen.query_one("#detail-loss").xs == list(range(28))
        preview = app.screen.query_one("#detail-grid")
        image = preview.query_one("#preview-image")
        # the PNG goes to textual-image (64x32 pixels), near the top of the panel, 16 rows high
        assert preview.path == sample_ws / "images" / "edit-0002-grid.png"
        assert (image._image_width, image._image_height) == (64, 32) and image.size.height == 16
        assert preview.virtual_region.y < app.screen.query_one("#detail-metrics").virtual_region.y
        assert "images/edit-0002-grid.png" in text_of(preview.query_one("#preview-note"))


async def test_history_rollback_confirm_text_names_the_edits(sample_ws, S, monkeypatch):
    calls = []
    app = make_app(sample_ws, S)
    monkeypatch.setattr(app, "run_service", lambda *a, **k: calls.append(a))
    async with on_screen(app, "4") as pilot:
        await select_row(pilot, app.screen.query_one("#history-table"), 0)
        await pilot.press("b")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmModal)
        assert "Edits 2, 3 (2) are marked rolled back" in app.screen.body
        await pilot.press("y")
        await pilot.pause()
        await pilot.press("f", "y", "p", "y", "o", "y", "e", "y")
        await pilot.pause()
    assert calls[0] == ("Rollback", "history", "rollback", 1)
    assert calls[1] == ("Fork", "history", "fork", 1, "main-fork1")
    assert [c[:3] for c in calls[2:]] == [("Replay", "history", "replay"), ("Re-optimize", "history", "replay"),
                                          ("Export", "export", "export_pipeline")]


async def test_failing_service_shows_error_modal_and_app_survives(sample_ws, S):
    app = make_app(sample_ws, S)
    async with opened(app) as pilot:
        app.run_service("Rollback", "history", "rollback", 4)  # edit 4 is rolled back: refused
        await settle(app, pilot)
        assert isinstance(app.screen, ErrorModal) and app.screen.title_text == "Rollback failed"
        assert "edit 4" in app.screen.message and "\n" not in app.screen.message
        await pilot.press("escape")
        app.run_service("Nothing", "no_such_module", "go")
        await settle(app, pilot)
        assert isinstance(app.screen, ErrorModal) and "no_such_module" in app.screen.message
        await pilot.press("escape", "2")
        await pilot.pause(0.1)
        assert app.current_mode == "live" and app.is_running


async def test_help_and_command_palette_cover_every_action(sample_ws, S):
    from refact_tui.tui.commands import COMMANDS, RefactCommands
    from refact_tui.tui.screens.help import KEYS

    app = make_app(sample_ws, S)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        # every binding of every screen has a palette entry
        actions = {c.action.removeprefix("app.") for c in COMMANDS}
        help_keys = {k for _, rows in KEYS for key, _ in rows for k in key.replace("/", " ").split()}
        for owner in (app, *app.MODES.values()):
            for b in owner.BINDINGS:
                assert b.action in actions or b.action == "quit", b.action
                for key in b.key.split(","):
                    assert {"question_mark": "?"}.get(key, key) in help_keys, key
        provider = RefactCommands(app.screen)
        hits = [h async for h in provider.search("rollback")]
        assert [h.text for h in hits] == ["Rollback to selected edit"]
        app.run_command("queue", "add")
        await pilot.pause(0.1)
        assert type(app.screen).__name__ == "AddEditModal"
