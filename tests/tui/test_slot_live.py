"""Multi-encoder edits on the Live and History read-models: per-slot progress and per-slot metrics."""

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


def test_live_view_follows_the_slot_being_optimised(S, sample_ws, db):
    first = d.live_view(db, now=S.NOW)
    assert first.slot == "text_encoder" and len(first.slots) == 1  # the sample's single-slot job 6
    writer = StepWriter(sample_ws / "refact.db", 6, 1)
    for i in range(3):  # the second slot starts after the first one stopped
        writer.add(S.curve(i, S.SAMPLE_HP.max_steps, 5), "text_encoder_2")
    writer.close()
    view = d.live_view(db, now=S.NOW, since_step=first.last.step, known_job=6, known_attempt=1,
                       known_slot=first.slot)
    assert view.reset and view.slot == "text_encoder_2" and [s.step for s in view.steps] == [0, 1, 2]
    assert [(r.slot, r.step) for r in view.slots] == [("text_encoder", S.RUNNING_STEPS - 1), ("text_encoder_2", 2)]
    again = d.live_view(db, now=S.NOW, since_step=2, known_job=6, known_attempt=1, known_slot="text_encoder_2")
    assert not again.reset and again.steps == () and again.last.step == 2

    from rich.console import Console

    from refact_tui.tui.widgets.step_stats import live_table

    console = Console(width=120, record=True)
    console.print(live_table(view))
    text = console.export_text()
    assert "slots" in text and f"text_encoder {S.RUNNING_STEPS} P" in text and "text_encoder_2 3 P" in text


def test_edit_detail_lists_each_slots_metrics(S, sample_ws, db):
    from store.metrics import record_metric

    for slot, value in (("text_encoder", 0.5), ("text_encoder_2", 0.9)):
        record_metric(db, eval_run_id=None, edit_id=2, space="text", name="efficacy", value=value, n=1, total=1,
                      final=True, slot=slot)
    detail = d.edit_detail_view(db, 2, root=sample_ws)
    assert next(m for m in detail.metrics if m.name == "efficacy").value == pytest.approx(0.7)  # unchanged
    assert [(m.slot, m.value) for m in detail.slot_metrics] == [("text_encoder", 0.5), ("text_encoder_2", 0.9)]
    assert d.history_view(db).efficacy[2] == pytest.approx(0.7)  # slot rows never replace the whole edit's
    from rich.console import Console

    from refact_tui.tui.widgets.edit_detail import _metrics

    console = Console(width=160, record=True)
    console.print(_metrics(detail))
    text = console.export_text()
    assert "text_encoder_2" in text and "0.9000" in text and "0.5000" in text
