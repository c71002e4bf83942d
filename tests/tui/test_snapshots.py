"""SVG snapshots of every screen and the main dialogs on the deterministic sample workspace.

The clock is frozen (``S.NOW``), event times are rendered in UTC and input cursors do not blink,
so the pictures only change when the layout or the data they show changes.
Update with: .venv/bin/pytest tests/tui/test_snapshots.py --snapshot-update
"""

from __future__ import annotations

from refact_tui.tui.app import RefactApp

SIZE = (120, 40)


def app_for(root, S) -> RefactApp:
    return RefactApp(root, clock=lambda: S.NOW)


def test_queue_screen(snap_compare, sample_ws, S):
    """Running job first, the failed job with its error, two queued jobs; the worker is alive."""
    assert snap_compare(app_for(sample_ws, S), press=["_"], terminal_size=SIZE)


def test_queue_failed_job_selected(snap_compare, sample_ws, S):
    """The failed job selected: its full error in the detail panel."""
    assert snap_compare(app_for(sample_ws, S), press=["_", "down"], terminal_size=SIZE)


def test_retry_confirmation(snap_compare, sample_ws, S):
    """Retrying a failed job asks first and repeats the error it failed with."""
    assert snap_compare(app_for(sample_ws, S), press=["_", "down", "r"], terminal_size=SIZE)


def test_add_edit_form(snap_compare, sample_ws, S):
    """The add-edit form."""
    assert snap_compare(app_for(sample_ws, S), press=["_", "a"], terminal_size=SIZE)


def test_live_screen(snap_compare, sample_ws, S):
    """Loss and P(target) curves with the 0.9 threshold line, step 12/40, ETA 14.0s, hparams, events."""
    assert snap_compare(app_for(sample_ws, S), press=["_", "2", "_"], terminal_size=SIZE)


def test_metrics_screen(snap_compare, sample_ws, S):
    """Text values per metric, a running image evaluation (5/8) on efficacy and CLIP score."""
    assert snap_compare(app_for(sample_ws, S), press=["_", "3", "_"], terminal_size=SIZE)


def test_history_screen(snap_compare, sample_ws, S):
    """Four edits (the fourth rolled back), edit 2 selected: detail, loss curve and hparams."""
    assert snap_compare(app_for(sample_ws, S), press=["_", "4", "_", "down"], terminal_size=SIZE)


def test_help_screen(snap_compare, sample_ws, S):
    """Every key."""
    assert snap_compare(app_for(sample_ws, S), press=["_", "question_mark"], terminal_size=SIZE)
