"""The queue worker on a tiny pipeline: ordering, records, crash/stop semantics, failures, lease."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from worker_helpers import FAST, new_workspace, queue, rebuild_hash, sample_requests, workspace_with_edits


@pytest.fixture(scope="module")
def done_ws(tmp_path_factory, model_dir):
    """A workspace after the worker ran three queued edits (events collected)."""
    events = []
    ws, jobs, summary = workspace_with_edits(tmp_path_factory.mktemp("ws") / "w", model_dir, 3, events.append)
    yield ws, jobs, events, summary
    ws.close()


def test_worker_applies_jobs_in_order_with_steps_and_hashes(done_ws, model_dir):
    from engine.events import StepEvent
    from refact_tui.services.worker import JobFinished, JobStarted
    from store.edits import list_edits
    from store.jobs import get_job
    from store.steps import steps_for_edit

    ws, jobs, events, summary = done_ws
    assert (summary.done, summary.failed, summary.requeued) == (3, 0, 0)
    edits = list_edits(ws.db, ws.history().id)
    assert [e.seq for e in edits] == [1, 2, 3]
    assert [e.job_id for e in edits] == [j.id for j in jobs]
    assert ws.history().head_seq == 3
    for job, edit in zip(jobs, edits):
        row = get_job(ws.db, job.id)
        assert (row.state, row.edit_id, row.attempts) == ("done", edit.id, 1)
        assert edit.status == "applied" and edit.request == job.request and edit.hparams == FAST
        steps = steps_for_edit(ws.db, edit.id)
        assert [s.step for s in steps] == list(range(edit.steps_run)) and edit.steps_run > 1
        assert steps[-1].nll < steps[0].nll  # the optimization made progress
        assert steps[-1].p_target > steps[0].p_target
    assert sum(isinstance(e, JobStarted) for e in events) == 3
    assert sum(isinstance(e, JobFinished) for e in events) == 3
    assert sum(isinstance(e, StepEvent) for e in events) == sum(e.steps_run for e in edits)
    # each recorded weights hash equals base + deltas 1..seq, recomputed independently
    paths = [ws.resolve(e.delta_path) for e in edits]
    for i, edit in enumerate(edits):
        assert rebuild_hash(model_dir, paths[: i + 1]) == edit.weights_hash
    assert len({e.weights_hash for e in edits}) == 3


def test_worker_delta_is_the_apply_less_edit_and_maps_k_e_to_v_star(done_ws, model_dir):
    from engine.covariance import SecondMomentStore
    from engine.delta import EditDelta
    from engine.methods.refact.edit import compute_edit
    from engine.models import load_model
    from store.edits import list_edits

    ws, jobs, _, _ = done_ws
    first = list_edits(ws.db, ws.history().id)[0]
    model = load_model(model_dir, device="cpu", with_pipeline=False)
    result = compute_edit(model, jobs[0].request, FAST, moments=SecondMomentStore(ws.stats_dir), n_samples=40)
    stored = EditDelta.load(ws.resolve(first.delta_path), expected_sha256=first.delta_sha256)
    assert torch.equal(stored.u, result.delta.u) and torch.equal(stored.r, result.delta.r)
    assert stored.meta["base_encoder_hash"] == ws_base_hash(ws)
    stored.apply(model)
    w = model.adapter.fc2(FAST.layer).weight.detach()
    err = (w @ result.tensors["k_e"] - result.tensors["v_star"]).abs().max().item()
    assert err < 1e-4


def ws_base_hash(ws) -> str:
    from store.base_models import get_base_model

    return get_base_model(ws.db, ws.history().base_model_id).encoder_hash


def test_failing_jobs_leave_the_model_untouched_and_the_worker_continues(tmp_path, model_dir, monkeypatch):
    import engine.methods.refact.edit as worker_module  # the per-slot edit, looked up when called
    from refact_tui.services.runner import run_worker
    from store.edits import list_edits
    from store.jobs import enqueue, get_job

    ws = new_workspace(tmp_path / "w", model_dir)
    reqs = sample_requests(3)
    bad_layer = enqueue(ws.db, ws.history().id, reqs[0], FAST.with_overrides(layer=9))
    nan_job, good = queue(ws, reqs[1:3])
    real = worker_module.compute_edit

    def poisoned(model, request, hparams, **kw):
        result = real(model, request, hparams, **kw)
        if request == nan_job.request:
            result.delta.r[0] = math.nan
        return result

    monkeypatch.setattr(worker_module, "compute_edit", poisoned)
    summary = run_worker(ws, device="cpu")
    assert (summary.done, summary.failed) == (1, 2)
    assert "layer 9" in get_job(ws.db, bad_layer.id).error
    assert "non-finite" in get_job(ws.db, nan_job.id).error
    assert get_job(ws.db, good.id).state == "done"
    edits = list_edits(ws.db, ws.history().id)
    assert [(e.seq, e.job_id) for e in edits] == [(1, good.id)]
    # the good edit was computed on (and applied to) the untouched base model
    assert rebuild_hash(model_dir, [ws.resolve(edits[0].delta_path)]) == edits[0].weights_hash
    ws.close()


def test_stop_between_steps_requeues_and_the_rerun_is_clean(tmp_path, model_dir):
    from engine.events import StepEvent
    from refact_tui.services.runner import run_worker
    from store.edits import list_edits
    from store.jobs import get_job
    from store.steps import steps_for_edit

    ws = new_workspace(tmp_path / "w", model_dir)
    (job,) = queue(ws, sample_requests(1))
    seen = []
    summary = run_worker(ws, device="cpu", on_event=lambda e: seen.append(e) if isinstance(e, StepEvent) else None,
                         should_stop=lambda: len(seen) >= 3)
    assert summary.stopped and summary.requeued == 1 and summary.done == 0
    row = get_job(ws.db, job.id)
    assert (row.state, row.attempts, row.edit_id) == ("queued", 1, None)
    assert list_edits(ws.db, ws.history().id) == [] and ws.history().head_seq == 0
    summary = run_worker(ws, device="cpu")
    assert summary.done == 1
    (edit,) = list_edits(ws.db, ws.history().id)
    assert get_job(ws.db, job.id).attempts == 2
    assert {s.attempt for s in steps_for_edit(ws.db, edit.id)} == {2}
    ws.close()


def test_cancelling_a_running_job_stops_it(tmp_path, model_dir):
    from engine.events import StepEvent
    from refact_tui.services.runner import run_worker
    from store.jobs import cancel_job, get_job

    ws = new_workspace(tmp_path / "w", model_dir)
    (job,) = queue(ws, sample_requests(1), FAST.with_overrides(max_steps=2000, prob_threshold=1.0))

    def on_event(ev):
        if isinstance(ev, StepEvent) and ev.step == 1:
            cancel_job(ws.db, job.id)

    summary = run_worker(ws, device="cpu", on_event=on_event)
    row = get_job(ws.db, job.id)
    assert row.state == "cancelled" and summary.done == 0 and ws.history().head_seq == 0
    ws.close()


def test_second_worker_is_refused_and_a_dead_holder_is_recovered(tmp_path, model_dir):
    from refact_tui.services.runner import run_worker
    from store.jobs import claim_next, get_job
    from store.leases import LeaseHeldError, acquire_lease, this_host

    ws = new_workspace(tmp_path / "w", model_dir)
    (job,) = queue(ws, sample_requests(1))
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        acquire_lease(ws.db, "worker", "other", live.pid, this_host())
        with pytest.raises(LeaseHeldError, match=str(live.pid)):
            run_worker(ws, device="cpu")
        claim_next(ws.db, "other")  # the other worker "is running" the job ...
    finally:
        live.kill()
        live.wait()  # ... and dies (reaped, so its pid is gone)
    summary = run_worker(ws, device="cpu")
    assert summary.recovered_jobs == [job.id] and summary.done == 1
    assert get_job(ws.db, job.id).attempts == 2
    ws.close()


def test_preserve_passes_earlier_same_layer_requests_to_the_edit(tmp_path, model_dir, monkeypatch):
    """With --preserve the worker hands the requests of the edits already applied on that layer to
    compute_edit (whose C then includes their keys); without it, none."""
    import engine.methods.refact.edit
    from refact_tui.services.runner import run_worker

    seen: list[list[str]] = []
    real = engine.methods.refact.edit.compute_edit

    def spy(model, request, hparams, **kw):
        seen.append([r.prompt for r in kw.get("preserve_requests", ())])
        return real(model, request, hparams, **kw)

    monkeypatch.setattr(engine.methods.refact.edit, "compute_edit", spy)
    ws = new_workspace(tmp_path / "w", model_dir)
    reqs = sample_requests(3)
    with ws:
        queue(ws, reqs[:2], FAST.with_overrides(preserve=5.0))
        queue(ws, reqs[2:], FAST)
        assert run_worker(ws, device="cpu", text_metrics=False).done == 3
    assert seen == [[], [reqs[0].prompt], []]
