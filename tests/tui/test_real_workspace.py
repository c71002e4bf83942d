"""The TUI's actions against a real workspace: tiny pipeline, edits made by the worker, real services."""

from __future__ import annotations

import pytest
from textual.worker import WorkerFailed

from refact_tui.tui.app import RefactApp
from refact_tui.tui.screens.error import ErrorModal
from store.db import open_db
from store.edits import list_edits
from store.histories import current_history

SIZE = (120, 40)


async def settle(app, pilot, timeout: float = 120.0) -> None:
    try:
        await app.workers.wait_for_complete()
    except WorkerFailed:
        pass
    await pilot.pause(0.15)
    await app.settled()


def state(root):
    db = open_db(root / "refact.db")
    try:
        hist = current_history(db)
        return hist, [(e.seq, e.status) for e in list_edits(db, hist.id)]
    finally:
        db.close()


def no_error(app) -> None:
    if isinstance(app.screen, ErrorModal):
        pytest.fail(f"{app.screen.title_text}: {app.screen.message}")


@pytest.mark.slow
async def test_rollback_export_fork_worker_and_text_eval_for_real(real_ws):
    app = RefactApp(real_ws, poll_interval=0.05, device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await pilot.pause(0.15)
        await app.settled()  # the screen's store read lands on a reader thread
        table = app.screen.query_one("#history-table")
        assert table.row_count == 3  # edits 1, 2 applied; 3 rolled back by the fixture
        table.focus()
        table.move_cursor(row=0)
        await pilot.press("b", "y")  # rollback to edit 1 (rebuilds and verifies the model hash)
        await settle(app, pilot)
        no_error(app)
        hist, edits = state(real_ws)
        assert hist.head_seq == 1 and edits == [(1, "applied"), (2, "rolled_back"), (3, "rolled_back")]
        assert "◀ head" in table.get_row_at(0)[1].plain

        await pilot.press("r", "y")  # roll forward (undo): edits 2 and 3 again, checked against edit 3's hash
        await settle(app, pilot)
        no_error(app)
        hist, edits = state(real_ws)
        assert hist.head_seq == 3 and edits == [(1, "applied"), (2, "applied"), (3, "applied")]
        table.move_cursor(row=0)
        await pilot.press("b", "y")  # and back to edit 1 for the rest
        await settle(app, pilot)
        no_error(app)
        assert state(real_ws)[0].head_seq == 1

        await pilot.press("e", "y")  # export base + edit 1
        await settle(app, pilot)
        no_error(app)
        out = real_ws / "exports" / "main-edit1"
        assert (out / "model_index.json").is_file()

        table.move_cursor(row=0)
        await pilot.press("f", "y")  # fork at edit 1: becomes the current history
        await settle(app, pilot)
        no_error(app)
        hist, edits = state(real_ws)
        assert hist.name == "main-fork1" and edits == [(1, "applied")]

        # queue one edit on the fork and let the in-TUI worker run it
        from engine.methods.refact.hparams import ReFACTHParams
        from engine.request import EditRequest

        app.run_service("Queue edit", "queue", "add_edit",
                        EditRequest(prompt="The Pope", source="John Paul II", target="Benedict XVI"),
                        ReFACTHParams(layer=2, lr=0.1, max_steps=10, prob_threshold=0.95))
        await settle(app, pilot)
        await pilot.press("2", "w")
        await settle(app, pilot)
        no_error(app)
        assert not app.worker_running
        hist, edits = state(real_ws)
        assert edits == [(1, "applied"), (2, "applied")] and hist.head_seq == 2
        live = app.screen
        assert live.view.job.state == "done" and len(live.query_one("#loss-plot").xs) == live.view.last.step + 1

        await pilot.press("3", "t")  # text-space evaluation of the latest edit
        await settle(app, pilot)
        no_error(app)
        panel = app.screen.query_one("#metric-efficacy")
        view = app.screen.view.panel("efficacy")
        assert view.text is not None and view.text.final and 0.0 <= view.text.value <= 1.0
        assert not panel.query_one("#progress").display
