"""The read-model on the deterministic sample workspace: exact rows, order, progress and ETA."""

from __future__ import annotations

import pytest

from refact_tui.services import dashboard as d
from store.db import open_db
from store.steps import StepWriter


@pytest.fixture
def db(sample_ws):
    database = open_db(sample_ws / "refact.db")
    yield database
    database.close()


def test_queue_view_orders_running_first_then_failed_and_queued_by_position(S, db):
    view = d.queue_view(db, now=S.NOW)
    assert [(j.id, j.state) for j in view.jobs] == [(6, "running"), (5, "failed"), (7, "queued"), (8, "queued")]
    assert view.counts == {"done": 4, "failed": 1, "queued": 2, "running": 1}
    assert view.job(5).error == S.FAILED_ERROR
    assert view.worker is not None and view.worker.alive and view.worker.heartbeat_age == pytest.approx(2.0)
    assert not d.queue_view(db, now=S.NOW + 100).worker.alive


def test_live_view_returns_all_steps_on_reset_then_only_new_ones(S, sample_ws, db):
    first = d.live_view(db, now=S.NOW)
    assert first.reset and first.running and first.job.id == 6 and first.attempt == 1
    assert [s.step for s in first.steps] == list(range(S.RUNNING_STEPS))
    last = S.curve(S.RUNNING_STEPS - 1, S.SAMPLE_HP.max_steps, 5)
    assert first.last.p_target == pytest.approx(last.p_target)
    assert first.threshold == 0.9 and first.max_steps == 40
    # ETA = remaining steps x mean step time: (40 - 1 - 11) x (6.0 / 12)
    assert first.eta == pytest.approx((40 - S.RUNNING_STEPS) * last.elapsed / S.RUNNING_STEPS)
    assert first.opt_elapsed == pytest.approx(last.elapsed)

    again = d.live_view(db, now=S.NOW, since_step=first.last.step, known_job=6, known_attempt=1)
    assert not again.reset and again.steps == () and again.last.step == S.RUNNING_STEPS - 1

    writer = StepWriter(sample_ws / "refact.db", 6, 1)  # the worker's own connection
    for i in range(S.RUNNING_STEPS, S.RUNNING_STEPS + 3):
        writer.add(S.curve(i, S.SAMPLE_HP.max_steps, 5))
    writer.close()
    new = d.live_view(db, now=S.NOW, since_step=first.last.step, known_job=6, known_attempt=1)
    assert [s.step for s in new.steps] == [12, 13, 14]
    assert new.eta == pytest.approx((40 - 1 - 14) * 7.5 / 15)


def test_metrics_view_latest_values_progress_and_series(S, db):
    view = d.metrics_view(db)
    eff = view.panel("efficacy")
    # text efficacy per edit was 0.6, 0.7, 0.8, 0.9; edit 4 is rolled back, so 0.8 is the latest that counts
    assert eff.text.value == pytest.approx(0.8) and eff.text.final and not eff.text.running
    assert eff.text_series == ((1, 0.6), (2, 0.7), (3, 0.8))
    assert eff.image.running and eff.image.progress == pytest.approx(5 / 8)
    clip = view.panel("clip_score")
    assert clip.text is None and clip.image.value == 27.5 and clip.image.std == 1.25
    assert [r.space for r in view.running] == ["image"] and view.last_failed is None
    assert [p.name for p in view.panels] == [n for n, _ in d.METRICS]


def test_history_view_and_edit_detail(S, sample_ws, db):
    view = d.history_view(db)
    assert view.history.head_seq == 3
    assert [(e.seq, e.status) for e in view.edits] == [(1, "applied"), (2, "applied"), (3, "applied"),
                                                         (4, "rolled_back")]
    assert view.efficacy[2] == pytest.approx(0.7)
    detail = d.edit_detail_view(db, 2, root=sample_ws)
    assert [s.step for s in detail.steps] == list(range(28))
    assert {m.name for m in detail.metrics} == {"efficacy", "generality", "specificity", "f1", "retention"}
    assert detail.grid_path == sample_ws / "images" / "edit-0002-grid.png" and detail.grid_path.is_file()
    assert detail.grid_relpath == "images/edit-0002-grid.png"
    assert d.edit_detail_view(db, 99, root=sample_ws) is None


def test_reads_leave_no_transaction_open(S, db):
    d.queue_view(db, now=S.NOW)
    d.live_view(db, now=S.NOW)
    d.metrics_view(db)
    d.history_view(db)
    assert not db.conn.in_transaction  # an open read would pin the WAL snapshot
