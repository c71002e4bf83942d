"""Edits, histories, metrics, events and artifacts: contents, atomic groups and views."""

from __future__ import annotations

import pytest

from engine.events import StepEvent
from store import jobs
from store.artifacts import add_artifact, list_artifacts
from store.base_models import get_base_model, register_base_model
from store.db import NotFoundError, StoreError, transaction
from store.edits import applied_edits, get_edit, list_edits, mark_rolled_back_after, next_seq, record_edit
from store.events import log_event, tail_events
from store.histories import create_history, current_history, get_history, list_histories, set_head
from store.integrity import integrity_check
from store.metrics import finish_eval_run, latest_metrics, metric_series, record_metric, start_eval_run
from store.steps import StepWriter, attach_steps, steps_for_edit, steps_for_job


def _edit_kwargs(history_id, job, **over):
    kw = dict(
        history_id=history_id, job_id=job.id if job else None, request=job.request if job else None,
        hparams=job.hparams if job else None, status="applied", layer=1, module="encoder.layers.1.mlp.fc2",
        delta_path="deltas/0001.safetensors", delta_sha256="d" * 64, weights_hash="w" * 64, steps_run=12,
        early_stopped=True, p_target=0.995, delta_norm=1.25, division_factor=3.5,
        timings={"total_s": 2.5, "optimize_s": 2.0}, device="cpu",
    )
    kw.update(over)
    return kw


def _run_job(db, db_path, history, hparams, request, n_steps=4):
    jobs.enqueue(db, history.id, request, hparams)
    job = jobs.claim_next(db, "w")
    with StepWriter(db_path, job.id, job.attempts) as w:
        for i in range(n_steps):
            w.add(StepEvent(i, 5.0 - i, 1.0, 0.1, 0.2 * i, 0.3 * i, 0.01 * i))
    return job


def _commit_edit(db, job, history, **over):
    with transaction(db):
        edit = record_edit(db, **_edit_kwargs(history.id, job, **over))
        jobs.finish_job(db, job.id, "done", edit_id=edit.id)
        attach_steps(db, job.id, job.attempts, edit.id)
    return edit


def test_record_edit_finish_job_attach_steps_commit_together(db, db_path, history, hparams, make_request):
    job = _run_job(db, db_path, history, hparams, make_request(1))
    edit = _commit_edit(db, job, history)
    got = get_edit(db, edit.id)
    assert (got.seq, got.status, got.request, got.hparams) == (1, "applied", make_request(1), hparams)
    assert got.timings == {"total_s": 2.5, "optimize_s": 2.0} and got.early_stopped is True
    assert (got.p_target, got.delta_norm, got.division_factor, got.steps_run) == (0.995, 1.25, 3.5, 12)
    assert jobs.get_job(db, job.id).state == "done" and jobs.get_job(db, job.id).edit_id == edit.id
    assert [s.loss for s in steps_for_edit(db, edit.id)] == [5.0, 4.0, 3.0, 2.0]
    assert get_history(db, history.id).head_seq == 1


def test_edit_group_rolls_back_together_on_exception(db, db_path, history, hparams, make_request):
    job = _run_job(db, db_path, history, hparams, make_request(1))
    with pytest.raises(RuntimeError, match="disk vanished"):
        with transaction(db):
            edit = record_edit(db, **_edit_kwargs(history.id, job))
            jobs.finish_job(db, job.id, "done", edit_id=edit.id)
            assert attach_steps(db, job.id, job.attempts, edit.id) == 4
            raise RuntimeError("disk vanished")
    assert list_edits(db, history.id) == []
    assert jobs.get_job(db, job.id).state == "running"
    assert all(s.edit_id is None for s in steps_for_job(db, job.id))
    assert get_history(db, history.id).head_seq == 0
    assert next_seq(db, history.id) == 1


def test_seq_rollback_and_applied_edits(db, db_path, history, hparams, make_request):
    edits = []
    for i in range(3):
        job = _run_job(db, db_path, history, hparams, make_request(i), n_steps=1)
        edits.append(_commit_edit(db, job, history))
    assert [e.seq for e in edits] == [1, 2, 3]
    assert [e.seq for e in applied_edits(db, history.id)] == [1, 2, 3]
    assert mark_rolled_back_after(db, history.id, 1) == 2
    assert get_history(db, history.id).head_seq == 1
    assert [e.seq for e in applied_edits(db, history.id)] == [1]
    assert [e.status for e in list_edits(db, history.id)] == ["applied", "rolled_back", "rolled_back"]
    assert [e.seq for e in list_edits(db, history.id, include_rolled_back=False)] == [1]
    # A new edit never reuses a rolled-back seq.
    job = _run_job(db, db_path, history, hparams, make_request(9), n_steps=1)
    new = _commit_edit(db, job, history)
    assert new.seq == 4
    assert [e.seq for e in applied_edits(db, history.id)] == [1, 4]
    assert [e.seq for e in applied_edits(db, history.id, upto_seq=3)] == [1]
    # A failed edit does not move the head.
    job = _run_job(db, db_path, history, hparams, make_request(10), n_steps=1)
    _commit_edit(db, job, history, status="failed", error="refused")
    assert get_history(db, history.id).head_seq == 4
    with pytest.raises(StoreError, match="edit status"):
        record_edit(db, **_edit_kwargs(history.id, job, status="weird"))
    # Edits are referenced by their job: the job cannot be removed.
    with pytest.raises(StoreError, match="only queued/failed/cancelled"):
        jobs.remove_job(db, edits[0].job_id)
    assert integrity_check(db) == []


def test_histories(db, history):
    base = get_base_model(db, history.base_model_id)
    assert base.config == {"num_layers": 2}
    # Registering the same model again returns the same row.
    assert register_base_model(db, "tiny", "/models/tiny", "sd-pipeline", "clip", "abc123", {}).id == base.id
    fork = create_history(db, base.id, "fork-a", parent_id=history.id, forked_at_seq=0)
    assert (fork.parent_id, fork.forked_at_seq, fork.head_seq) == (history.id, 0, 0)
    assert get_history(db, "fork-a").id == fork.id and get_history(db, str(fork.id)).id == fork.id
    assert [h.name for h in list_histories(db)] == ["main", "fork-a"]
    assert current_history(db).id == history.id
    with pytest.raises(StoreError, match="already exists"):
        create_history(db, base.id, "main")
    with pytest.raises(StoreError, match="does not exist"):
        create_history(db, 999, "lost")
    with pytest.raises(NotFoundError, match="no history 'nope'"):
        get_history(db, "nope")
    with pytest.raises(StoreError, match="no edit with seq 3"):
        set_head(db, history.id, 3)
    assert set_head(db, history.id, 0).head_seq == 0


def test_latest_metrics_view_returns_newest_row_per_edit_space_name(db, db_path, history, hparams, make_request):
    e1 = _commit_edit(db, _run_job(db, db_path, history, hparams, make_request(1), 1), history)
    e2 = _commit_edit(db, _run_job(db, db_path, history, hparams, make_request(2), 1), history)
    run = start_eval_run(db, history.id, at_seq=2, space="text", config={"n": 3})
    for n, value in enumerate([0.1, 0.5, 0.9], start=1):  # progressive values of one metric
        record_metric(db, eval_run_id=run.id, edit_id=e1.id, space="text", name="efficacy", value=value,
                      n=n, total=3, final=n == 3)
    record_metric(db, eval_run_id=run.id, edit_id=e1.id, space="image", name="efficacy", value=0.7, n=1, total=1,
                  final=True)
    record_metric(db, eval_run_id=run.id, edit_id=e2.id, space="text", name="efficacy", value=0.3, n=1, total=2,
                  final=False)
    record_metric(db, eval_run_id=run.id, edit_id=None, space="text", name="retention", value=0.8, std=0.1,
                  n=2, total=2, final=True)
    latest = latest_metrics(db)
    got = {(m.edit_id, m.space, m.name): (m.value, m.n, m.final) for m in latest}
    assert got == {
        (e1.id, "text", "efficacy"): (0.9, 3, True),
        (e1.id, "image", "efficacy"): (0.7, 1, True),
        (e2.id, "text", "efficacy"): (0.3, 1, False),
        (None, "text", "retention"): (0.8, 2, True),
    }
    assert [(m.space, m.value) for m in latest_metrics(db, e1.id)] == [("image", 0.7), ("text", 0.9)]
    assert latest_metrics(db, e2.id)[0].progress == 0.5
    assert metric_series(db, history.id, "text", "efficacy") == [(1, 0.9), (2, 0.3)]
    assert metric_series(db, history.id, "text", "retention") == [(2, 0.8)]
    assert finish_eval_run(db, run.id, "done").state == "done"
    with pytest.raises(StoreError, match="NaN"):
        record_metric(db, eval_run_id=run.id, edit_id=e1.id, space="text", name="x", value=float("nan"),
                      n=0, total=1, final=False)


def test_events_tail_and_artifacts(db, history):
    ids = [log_event(db, "worker", f"line {i}", level="warning" if i == 3 else "info") for i in range(5)]
    tail = tail_events(db, limit=3)
    assert [e.message for e in tail] == ["line 2", "line 3", "line 4"]
    assert tail[1].level == "warning"
    assert [e.message for e in tail_events(db, since_id=ids[3])] == ["line 4"]
    with pytest.raises(StoreError, match="level"):
        log_event(db, "worker", "x", level="loud")

    art = add_artifact(db, "history", history.id, "grid", "images/grid.png", sha256="a" * 64, bytes=123,
                       meta={"seed": 0, "prompt": "Citroën"})
    assert list_artifacts(db, "history", history.id) == [art]
    assert art.meta == {"seed": 0, "prompt": "Citroën"} and art.bytes == 123
    assert list_artifacts(db, "edit", history.id) == []
    with pytest.raises(StoreError, match="owner"):
        add_artifact(db, "planet", 1, "grid", "x")
