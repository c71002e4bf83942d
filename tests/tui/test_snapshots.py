"""SVG snapshots of every screen and the main dialogs on the deterministic sample workspace.

The clock is frozen (``S.NOW``), event times are rendered in UTC and input cursors do not blink,
so the pictures only change when the layout or the data they show changes.
Update with: .venv/bin/pytest tests/tui/test_snapshots.py --snapshot-update
"""

from __future__ import annotations

import pytest

from refact_tui.tui.app import RefactApp

SIZE = (120, 40)


def app_for(root, S) -> RefactApp:
    return RefactApp(root, clock=lambda: S.NOW)


def keys(*pressed: str):
    """Press each key, then wait until the store reads it caused were drawn (they run on a thread)."""

    async def run(pilot) -> None:
        for key in pressed:
            await pilot.press(key)
            await pilot.app.settled()
            await pilot.pause()

    return run


def test_queue_screen(snap_compare, sample_ws, S):
    """Running job first, the failed job with its error, two queued jobs; the worker is alive."""
    assert snap_compare(app_for(sample_ws, S), run_before=keys("_"), terminal_size=SIZE)


def test_queue_failed_job_selected(snap_compare, sample_ws, S):
    """The failed job selected: its full error in the detail panel."""
    assert snap_compare(app_for(sample_ws, S), run_before=keys("_", "down"), terminal_size=SIZE)


def test_retry_confirmation(snap_compare, sample_ws, S):
    """Retrying a failed job asks first and repeats the error it failed with."""
    assert snap_compare(app_for(sample_ws, S), run_before=keys("_", "down", "r"), terminal_size=SIZE)


def test_add_edit_form(snap_compare, sample_ws, S):
    """The add-edit form."""
    assert snap_compare(app_for(sample_ws, S), run_before=keys("_", "a"), terminal_size=SIZE)


def test_live_screen(snap_compare, sample_ws, S):
    """Loss and P(target) curves with the 0.9 threshold line, step 12/40, ETA 14.0s, hparams, events."""
    assert snap_compare(app_for(sample_ws, S), run_before=keys("_", "2", "_"), terminal_size=SIZE)


def test_metrics_screen(snap_compare, sample_ws, S):
    """Text values per metric, a running image evaluation (5/8) on efficacy and CLIP score."""
    assert snap_compare(app_for(sample_ws, S), run_before=keys("_", "3", "_"), terminal_size=SIZE)


def test_history_screen(snap_compare, sample_ws, S):
    """Four edits (the fourth rolled back), edit 2 selected: detail, loss curve and hparams."""
    assert snap_compare(app_for(sample_ws, S), run_before=keys("_", "4", "_", "down"), terminal_size=SIZE)


def test_help_screen(snap_compare, sample_ws, S):
    """Every key."""
    assert snap_compare(app_for(sample_ws, S), run_before=keys("_", "question_mark"), terminal_size=SIZE)


# --- every screen at the smallest supported terminal (80x24) and the Bench screen at both sizes ----------

SMALL = (80, 24)


@pytest.mark.parametrize("pressed", [["_"], ["_", "2", "_"], ["_", "3", "_"], ["_", "4", "_", "down"],
                                     ["_", "question_mark"]],
                         ids=["queue", "live", "metrics", "history", "help"])
def test_screen_at_80x24(snap_compare, sample_ws, S, pressed):
    """Labels kept, Live's plots stacked, >= 10 queue rows, `? Help` and `q Quit` in every footer."""
    assert snap_compare(app_for(sample_ws, S), run_before=keys(*pressed), terminal_size=SMALL)


@pytest.mark.parametrize("size", [SIZE, SMALL], ids=["120x40", "80x24"])
def test_bench_screen(snap_compare, sample_ws, S, size):
    """Two stored runs: the runs table, the paper-layout aggregates and the per-row table, unclipped."""
    from test_bench_screen import _store_runs

    _store_runs(sample_ws)
    assert snap_compare(app_for(sample_ws, S), run_before=keys("_", "5", "_"), terminal_size=size)


def test_histories_modal(snap_compare, sample_ws, S):
    """A fork of 'main' at edit 2 under its parent, with the fork point and each queue's size."""
    from refact_tui.services.history import fork
    from refact_tui.services.workspace import Workspace

    ws = Workspace.open(sample_ws)
    fork(ws, 2, "side")
    ws.close()

    async def settle(pilot):
        await keys("_", "4")(pilot)
        await pilot.press("h")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.2)

    assert snap_compare(app_for(sample_ws, S), run_before=settle, terminal_size=SIZE)
