"""Attempt accounting: only an attempt whose worker died while the job optimized or committed counts
against it. Graceful stops, a bad --device, a model that cannot load, or a worker killed while loading
never fail a job; a job failed by the poison-job rule says why and that `queue retry` requeues it."""

from __future__ import annotations

import pytest
from worker_helpers import FAST, new_workspace, queue, sample_requests


def test_repeated_graceful_stops_never_fail_the_job(tmp_path, model_dir):
    from engine.events import StepEvent
    from refact_tui.services.runner import run_worker
    from store.jobs import get_job

    ws = new_workspace(tmp_path / "w", model_dir)
    (job,) = queue(ws, sample_requests(1))
    for _ in range(7):  # more than max_attempts (5) Ctrl-C stops
        seen = []
        summary = run_worker(ws, device="cpu", text_metrics=False, should_stop=lambda: len(seen) >= 1,
                             on_event=lambda e: seen.append(e) if isinstance(e, StepEvent) else None)
        assert summary.stopped and summary.requeued == 1 and summary.failed == 0
    row = get_job(ws.db, job.id)
    assert (row.state, row.attempts, row.crashes) == ("queued", 7, 0)
    assert run_worker(ws, device="cpu", text_metrics=False).done == 1
    ws.close()


def test_bad_device_and_failing_model_load_claim_nothing(tmp_path, model_dir):
    from engine.errors import EngineError, ModelNotFoundError
    from refact_tui.services.runner import db_path, run_worker
    from refact_tui.services.worker import Worker, WorkerConfig
    from store.jobs import get_job

    ws = new_workspace(tmp_path / "w", model_dir)
    (job,) = queue(ws, sample_requests(1))
    for _ in range(6):
        with pytest.raises(EngineError, match="unknown device 'tpu'"):
            run_worker(ws, device="tpu")

    def broken_loader(history_id):
        raise ModelNotFoundError("base model folder is gone")

    cfg = WorkerConfig(db_path=db_path(ws), root=ws.root, deltas_dir=ws.deltas_dir, stats_dir=ws.stats_dir,
                       device="cpu")
    for _ in range(6):
        with pytest.raises(ModelNotFoundError):
            Worker(cfg, broken_loader).run()
    row = get_job(ws.db, job.id)
    assert (row.state, row.attempts, row.crashes, row.worker_id) == ("queued", 0, 0, None)
    ws.close()


def test_only_deaths_while_optimizing_or_committing_are_charged(tmp_path):
    from engine.methods.refact.hparams import ReFACTHParams
    from store import jobs
    from store.base_models import register_base_model
    from store.db import open_db
    from store.histories import create_history

    db = open_db(tmp_path / "refact.db", create=True)
    base = register_base_model(db, "tiny", "/m", "sd-pipeline", "clip", "abc", {"num_layers": 2})
    h = create_history(db, base.id, "main")
    (req,) = sample_requests(1)
    job = jobs.enqueue(db, h.id, req, ReFACTHParams(layer=1, max_steps=5))
    for phase in ("claimed", "loading") * 4:  # killed before the job itself ran: never charged
        jobs.claim_next(db, "w")
        jobs.set_phase(db, job.id, phase, worker_id="w")
        assert jobs.recover_orphans(db, max_crashes=3).charged == []
    assert jobs.get_job(db, job.id).crashes == 0
    for n, phase in enumerate(("optimizing", "committing", "optimizing"), start=1):
        jobs.claim_next(db, "w")
        jobs.set_phase(db, job.id, phase, worker_id="w")
        rec = jobs.recover_orphans(db, max_crashes=3)
        assert rec.charged == [job.id] and jobs.get_job(db, job.id).crashes == n
    row = jobs.get_job(db, job.id)
    assert rec.failed == [job.id] and row.state == "failed"
    assert "optimization or commit 3 times" in row.error and f"refact queue retry {job.id}" in row.error
    again = jobs.retry_job(db, job.id)
    assert (again.state, again.crashes) == ("queued", 0)
    db.close()


def test_queue_ls_says_why_a_job_failed_and_how_to_requeue_it(tmp_path, model_dir):
    from typer.testing import CliRunner

    from refact_tui.cli.main import app
    from store.jobs import claim_next, finish_job

    root = tmp_path / "w"
    with new_workspace(root, model_dir) as ws:
        (job,) = queue(ws, sample_requests(1), FAST)
        claim_next(ws.db, "w")
        reason = "the worker died during this job's optimization or commit 5 times (a crash it causes, or kills " \
                 f"from outside); `refact queue retry {job.id}` requeues it"
        finish_job(ws.db, job.id, "failed", error=reason)
    r = CliRunner().invoke(app, ["--workspace", str(root), "queue", "ls"], terminal_width=100)
    assert r.exit_code == 0
    text = " ".join(r.stdout.split())
    assert f"job {job.id} failed: the worker died during this job's optimization or commit 5 times" in text
    assert f"`refact queue retry {job.id}` requeues it" in text


def _store_with_jobs(tmp_path, requests):
    from engine.methods.refact.hparams import ReFACTHParams
    from store import jobs
    from store.base_models import register_base_model
    from store.db import open_db
    from store.histories import create_history

    db = open_db(tmp_path / "refact.db", create=True)
    base = register_base_model(db, "tiny", "/m", "sd-pipeline", "clip", "abc", {"num_layers": 2})
    h = create_history(db, base.id, "main")
    return db, [jobs.enqueue(db, h.id, r, ReFACTHParams(layer=1, max_steps=5)) for r in requests]


def test_a_death_during_a_batch_charges_the_batch_and_its_jobs_then_run_alone(tmp_path):
    """Issue 21 item 11: a poison job in a batch must not take its batch mates to `failed`."""
    from store import jobs
    from store.batches import claim_batch

    db, queued = _store_with_jobs(tmp_path, sample_requests(3))
    ids = [j.id for j in queued]
    for _ in range(6):  # more deaths than max_crashes: each batch death is the batch's
        claimed = claim_batch(db, "w", 3)
        assert [j.id for j in claimed] == ids
        for j in claimed:
            jobs.set_phase(db, j.id, "optimizing", worker_id="w")
        rec = jobs.recover_orphans(db, max_crashes=3)
        assert (rec.charged, rec.failed, rec.batch_charged) == ([], [], ids)
        assert all((r.state, r.crashes) == ("queued", 0) and "runs alone next" in r.error
                   for r in map(lambda i: jobs.get_job(db, i), ids))
        # the next claims run them alone, so a poison job dies by itself and is charged there
        alone = claim_batch(db, "w", 3)
        assert [j.id for j in alone] == ids[:1]
        jobs.set_phase(db, ids[0], "optimizing", worker_id="w")
        rec = jobs.recover_orphans(db, max_crashes=100)
        assert rec.charged == [ids[0]] and rec.batch_charged == []
        assert [j.id for j in claim_batch(db, "w", 3)] == ids[:1]  # crashed before: still alone
        jobs.requeue_job(db, ids[0])
        for i in ids:  # back to a fresh state for the next round
            db.execute("UPDATE jobs SET crashes = 0, error = NULL WHERE id = ?", [i])
    db.close()


def test_requests_with_the_same_subject_never_share_a_batch(tmp_path):
    """Issue 21 item 3: summed rank-one updates of one key miss both targets; the later one waits."""
    from engine.request import EditRequest
    from store.batches import claim_batch

    reqs = [EditRequest("The old king", "a king", "a queen"), EditRequest("A duke", "a duke", "a baron"),
            EditRequest("The old King", "a king", "an emperor"), EditRequest("A bishop", "a bishop", "a pope")]
    db, queued = _store_with_jobs(tmp_path, reqs)
    ids = [j.id for j in queued]
    assert [j.id for j in claim_batch(db, "w", 4)] == ids[:2]  # stops before the second "king"
    assert [j.id for j in claim_batch(db, "w", 4)] == ids[2:]
    db.close()
