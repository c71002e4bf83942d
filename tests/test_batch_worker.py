"""`refact run --batch N`: N queued jobs as one batch edit; records, rollback, bad input (issue 9)."""

from __future__ import annotations

import pytest
from worker_helpers import FAST, new_workspace, queue, rebuild_hash, sample_requests, spy_batch_preserve


def run_batch(ws, n, **kw):
    from refact_tui.services.runner import run_worker
    from refact_tui.services.worker_types import BatchSettings

    events = []
    summary = run_worker(ws, device="cpu", batch=BatchSettings(size=n, **kw), on_event=events.append)
    return summary, events


@pytest.mark.parametrize("mode", ["joint"])  # rank-one batches: test_queue_ls_shows_batches_..., batch_of_one
def test_batch_is_one_edit_with_per_request_rows_and_rebuilds_bit_exact(tmp_path, model_dir, mode):
    from refact_tui.services.batch_worker import BatchFinished, BatchStarted, BatchStep
    from refact_tui.services.history import rollback
    from refact_tui.services.working_model import load_history_model
    from store.batches import batch_requests
    from store.edits import list_edits
    from store.jobs import get_job
    from store.metrics import latest_metrics
    from store.steps import steps_for_edit

    with new_workspace(tmp_path / "w", model_dir) as ws:
        jobs = queue(ws, sample_requests(5))
        summary, events = run_batch(ws, 4, insert=mode)
        assert (summary.done, summary.failed) == (5, 0)  # a batch of 4, then a batch of the 1 left
        edits = list_edits(ws.db, ws.history().id)
        assert [e.kind for e in edits] == ["batch", "batch"]
        first = edits[0]
        rows = batch_requests(ws.db, first.id)
        assert [r.job_id for r in rows] == [j.id for j in jobs[:4]]
        assert all(get_job(ws.db, j.id).edit_id == first.id for j in jobs[:4])
        assert all(r.steps_run >= 1 and r.metrics.get("efficacy") is not None for r in rows)
        agg = {m.name: m.value for m in latest_metrics(ws.db, first.id)}
        assert abs(agg["efficacy"] - sum(r.metrics["efficacy"] for r in rows) / 4) < 1e-9
        assert {s.job_id for s in steps_for_edit(ws.db, first.id)} == {j.id for j in jobs[:4]}
        assert any(isinstance(e, BatchStarted) for e in events) and any(isinstance(e, BatchStep) for e in events)
        assert sum(isinstance(e, BatchFinished) for e in events) == 2
        if mode == "joint":
            assert max(r.residual for r in rows) < 0.05
        # rebuild from base + the two batch deltas == the recorded hash; rollback across a batch is exact
        root = tmp_path / "w"
        assert rebuild_hash(model_dir, [root / e.delta_path for e in edits]) == edits[-1].weights_hash
        back = rollback(ws, 1)
        assert back.weights_hash == first.weights_hash
        assert load_history_model(ws, ws.history().id, "cpu").weights_hash == first.weights_hash


def test_batch_of_one_rank_one_matches_the_sequential_edit(tmp_path, model_dir):
    from refact_tui.services.runner import run_worker
    from store.edits import list_edits

    with new_workspace(tmp_path / "a", model_dir) as ws:
        queue(ws, sample_requests(1))
        run_batch(ws, 1)
        batch_edit = list_edits(ws.db, ws.history().id)[0]
    with new_workspace(tmp_path / "b", model_dir) as ws:
        queue(ws, sample_requests(1))
        run_worker(ws, device="cpu")
        single = list_edits(ws.db, ws.history().id)[0]
    assert batch_edit.kind == "batch" and single.kind == "edit"
    assert batch_edit.steps_run == single.steps_run
    assert abs(batch_edit.p_target - single.p_target) < 1e-5


def test_bad_batch_input_is_one_line(tmp_path, model_dir):
    from engine.methods.refact.hparams import HParamsError
    from refact_tui.services.worker_types import BatchSettings
    from store.base_models import get_base_model
    from store.batches import BatchMixError, check_same_base
    from store.histories import create_history
    from store.jobs import list_jobs

    with pytest.raises(HParamsError, match="--batch must be >= 1"):
        BatchSettings(size=0).validate()
    with new_workspace(tmp_path / "w", model_dir) as ws:
        queue(ws, sample_requests(2))
        with pytest.raises(HParamsError, match="out of range"):
            run_batch(ws, 2, insert="spread", layers=(1, 9))
        assert all(j.state == "queued" and j.attempts == 0 for j in list_jobs(ws.db))
        base = get_base_model(ws.db, ws.history().base_model_id)
        ws.db.execute("INSERT INTO base_models (source, path, kind, encoder_family, encoder_hash, created_at) "
                      "VALUES ('x', '/x', 'text-encoder', 'clip', 'other', 0)")
        other_base = ws.db.execute("SELECT MAX(id) FROM base_models").fetchone()[0]
        other = create_history(ws.db, other_base, "other")
        from refact_tui.services.queue import add_edit

        foreign = add_edit(ws, sample_requests(1)[0], FAST, history=other.id) if "history" in add_edit.__code__.co_varnames else None
        if foreign is None:
            from store.jobs import enqueue

            foreign = enqueue(ws.db, other.id, sample_requests(1)[0], FAST)
        with pytest.raises(BatchMixError, match="mix 2 base models"):
            check_same_base(ws.db, [*list_jobs(ws.db, ws.history().id), foreign])
        assert base.id != other_base


def test_cli_batch_errors_are_one_line(tmp_path, model_dir):
    from typer.testing import CliRunner

    from refact_tui.cli.main import app

    with new_workspace(tmp_path / "w", model_dir) as ws:
        queue(ws, sample_requests(1))
    runner = CliRunner()
    for args, word in ((["--batch", "0"], "--batch must be >= 1"), (["--batch", "2", "--insert", "spread", "--layers", "1,9"], "out of range"),
                       (["--insert", "joint"], "need --batch")):
        res = runner.invoke(app, ["--workspace", str(tmp_path / "w"), "run", "--device", "cpu", *args])
        assert res.exit_code != 0
        out = (res.stderr if hasattr(res, "stderr") and res.stderr else res.output).strip()
        assert word in out and len(out.splitlines()) == 1, out


def test_queue_ls_shows_batches_and_fork_replay_keep_them(tmp_path, model_dir):
    from typer.testing import CliRunner

    from refact_tui.cli.main import app
    from refact_tui.services.history import fork, replay
    from store.batches import batch_requests
    from store.edits import list_edits
    from store.jobs import list_jobs

    with new_workspace(tmp_path / "w", model_dir) as ws:
        queue(ws, sample_requests(2))
        run_batch(ws, 2, insert="joint")  # tiny model: summed rank-one updates cross-talk past the guard
        token = list_jobs(ws.db)[0].batch_token
        assert token and {j.batch_token for j in list_jobs(ws.db)} == {token}
        original = list_edits(ws.db, ws.history().id)[0]
        forked = fork(ws, 1, "f")
        (copy,) = list_edits(ws.db, forked.id)
        assert copy.kind == "batch" and len(batch_requests(ws.db, copy.id)) == 2
        assert copy.weights_hash == original.weights_hash
        again = replay(ws)
        (rep,) = list_edits(ws.db, again.id)
        assert rep.kind == "batch" and rep.weights_hash == original.weights_hash  # bit-exact re-application
        reopt = replay(ws, reoptimize=True)
        assert len(list_jobs(ws.db, reopt.id, ["queued"])) == 2  # every request of the batch is queued again
    res = CliRunner().invoke(app, ["--workspace", str(tmp_path / "w"), "queue", "ls", "--all"])
    assert res.exit_code == 0 and "batch" in res.output and token[:6] in res.output


def test_preserve_protects_every_request_of_an_earlier_batch(tmp_path, model_dir, monkeypatch):
    seen = spy_batch_preserve(monkeypatch)
    reqs = sample_requests(4)
    with new_workspace(tmp_path / "w", model_dir) as ws:
        queue(ws, reqs, FAST.with_overrides(preserve=1.0))
        summary, _ = run_batch(ws, 2, insert="joint")
        assert summary.done == 4
    assert seen == [[], [reqs[0].prompt, reqs[1].prompt]]


def test_stop_between_steps_requeues_every_job_of_the_batch(tmp_path, model_dir):
    from refact_tui.services.batch_worker import BatchStep
    from refact_tui.services.runner import run_worker
    from refact_tui.services.worker_types import BatchSettings
    from store.edits import list_edits
    from store.jobs import list_jobs

    steps = []
    with new_workspace(tmp_path / "w", model_dir) as ws:
        queue(ws, sample_requests(3), FAST.with_overrides(max_steps=50, prob_threshold=1.0))
        summary = run_worker(ws, device="cpu", batch=BatchSettings(size=3),
                             on_event=lambda ev: steps.append(ev) if isinstance(ev, BatchStep) else None,
                             should_stop=lambda: len(steps) >= 6)
        assert summary.stopped and summary.requeued == 3 and summary.done == 0
        assert list_edits(ws.db, ws.history().id) == []
        assert all(j.state == "queued" for j in list_jobs(ws.db))


@pytest.mark.parametrize("queued", [2, 0])
def test_every_run_option_is_checked_before_any_job_is_claimed(tmp_path, model_dir, queued):
    """Issue 21 items 1, 4-6: each bad option exits 2 with one line, claims nothing, whether or not the
    queue holds jobs. The tiny encoder has 4 layers; its final (EOS) readout is out of layer 3's reach."""
    from typer.testing import CliRunner

    from refact_tui.cli.main import app
    from store.jobs import list_jobs

    root = tmp_path / "w"
    with new_workspace(root, model_dir) as ws:
        queue(ws, sample_requests(queued))
    cases = [
        (["--batch", "2", "--insert", "joint", "--lambda", "-1"], "--lambda must be a finite number in 0.."),
        (["--batch", "2", "--insert", "joint", "--lambda", "nan"], "--lambda must be"),
        (["--batch", "2", "--insert", "spread", "--lambda", "inf"], "--lambda must be"),
        (["--batch", "2", "--insert", "joint", "--lambda", "1e300"], "--lambda must be"),
        (["--batch", "9223372036854775808"], "--batch must be >= 1 and <= 4096"),
        (["--batch", "2", "--insert", "spread", "--layers", "1,2,3"], "--layers 3 is out of range"),
        (["--batch", "2", "--insert", "spread", "--layers", "1,9"], "--layers 9 is out of range"),
        (["--batch", "2", "--insert", "spread", "--layers", ""], "--layers '' is not"),
        (["--batch", "2", "--insert", "rank-one", "--lambda", "0.01"], "a rank-one batch would ignore them"),
        (["--batch", "2", "--insert", "rank-one", "--null-space"], "a rank-one batch would ignore them"),
        (["--layers", "1"], "need --batch"),
    ]
    runner = CliRunner()
    for args, word in cases:
        res = runner.invoke(app, ["--workspace", str(root), "run", "--device", "cpu", *args])
        err = res.stderr.strip()
        assert res.exit_code == 2 and "Traceback" not in res.output, (args, res.output)
        assert word in err and len(err.splitlines()) == 1 and err.startswith("error: "), (args, err)
    from refact_tui.services.workspace import Workspace

    with Workspace.open(root) as ws:
        assert all(j.state == "queued" and j.attempts == 0 for j in list_jobs(ws.db))
        assert len(list_jobs(ws.db)) == queued


def test_max_counts_jobs_under_batch(tmp_path, model_dir):
    """Issue 16 / 21 item 5: `run --batch 4 --max 3` applies exactly 3 jobs (one batch of 3)."""
    from refact_tui.services.runner import run_worker
    from refact_tui.services.worker_types import BatchSettings
    from store.batches import batch_requests
    from store.edits import list_edits
    from store.jobs import list_jobs

    with new_workspace(tmp_path / "w", model_dir) as ws:
        jobs = queue(ws, sample_requests(5))
        summary = run_worker(ws, device="cpu", batch=BatchSettings(size=4, insert="joint"), max_jobs=3,
                             text_metrics=False)
        assert (summary.done, summary.failed) == (3, 0)
        (edit,) = list_edits(ws.db, ws.history().id)
        assert [r.job_id for r in batch_requests(ws.db, edit.id)] == [j.id for j in jobs[:3]]
        assert [j.state for j in list_jobs(ws.db)] == ["done"] * 3 + ["queued"] * 2


def test_a_refused_batch_requeues_its_jobs_which_then_run_alone(tmp_path, model_dir, monkeypatch):
    """Issue 21 item 10: a refused batch never fails its members; the reason is kept, each runs alone."""
    import refact_tui.services.batch_worker as bw
    from engine.errors import InsertionRefusedError
    from refact_tui.services.runner import run_worker
    from store.edits import list_edits
    from store.jobs import list_jobs

    real, sizes = bw.compute_outcome, []

    def refuse_batches(model, requests, *a, **kw):
        sizes.append(len(requests))
        if len(requests) > 1:
            raise InsertionRefusedError("request 2 of the batch keeps 0.93 of its miss (limit 0.50)")
        return real(model, requests, *a, **kw)

    monkeypatch.setattr(bw, "compute_outcome", refuse_batches)
    with new_workspace(tmp_path / "w", model_dir) as ws:
        jobs = queue(ws, sample_requests(3))
        events = []
        summary = run_worker(ws, device="cpu", batch=bw.BatchSettings(size=3, insert="joint"), max_jobs=3,
                             text_metrics=False, on_event=events.append)
        assert sizes == [3], sizes  # --max 3 stopped after the refused batch (a claim of 3 jobs)
        assert (summary.done, summary.failed, summary.requeued) == (0, 0, 3)
        rows = list_jobs(ws.db)
        assert all(j.state == "queued" and "its batch of 3 was refused (request 2" in j.error for j in rows)
        summary = run_worker(ws, device="cpu", batch=bw.BatchSettings(size=3, insert="joint"), text_metrics=False)
        assert sizes == [3, 1, 1, 1] and (summary.done, summary.failed) == (3, 0)
        assert len(list_edits(ws.db, ws.history().id)) == 3
        assert all(j.state == "done" and j.error is None for j in list_jobs(ws.db))
    assert [j.id for j in jobs] == [r.id for r in rows]


def test_a_full_disk_while_saving_a_batch_delta_is_one_line_and_requeues(tmp_path, model_dir, monkeypatch):
    """Issue 21 item 13: safetensors reports a full disk as its own error type, not OSError."""
    from safetensors import SafetensorError

    from engine.delta import EditDelta
    from refact_tui.services.worker import DeltaWriteError
    from store.jobs import list_jobs

    def full(self, path):
        raise SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")

    monkeypatch.setattr(EditDelta, "save", full)
    with new_workspace(tmp_path / "w", model_dir) as ws:
        queue(ws, sample_requests(2))
        with pytest.raises(DeltaWriteError, match="No space left on device") as info:
            run_batch(ws, 2, insert="joint")  # rank-one would be refused (tiny model) before any save
        assert len(str(info.value).splitlines()) == 1 and "free disk space" in str(info.value)
        assert all((j.state, j.crashes) == ("queued", 0) for j in list_jobs(ws.db))


def test_orphan_batch_deltas_are_collected_by_the_next_worker(tmp_path, model_dir):
    """Issue 21 item 12: a dead batch's delta file and its atomic-write temporary are removed."""
    from refact_tui.services.runner import run_worker
    from store.batches import claim_batch
    from store.jobs import list_jobs, set_phase

    root = tmp_path / "w"
    with new_workspace(root, model_dir) as ws:
        queue(ws, sample_requests(3))
        claimed = claim_batch(ws.db, "dead-worker", 3)
        for j in claimed:
            set_phase(ws.db, j.id, "committing", worker_id="dead-worker")
        hid, token, first = ws.history().id, claimed[0].batch_token, claimed[0].id
        orphans = [root / "deltas" / f"h{hid:04d}-batch-{token}-job{first:05d}.safetensors",
                   root / "deltas" / f".h{hid:04d}-batch-{token}-job{first:05d}.safetensors.x1y2.tmp"]
        keep = root / "deltas" / "notes.txt"
        for p in (*orphans, keep):
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"half")
        summary = run_worker(ws, device="cpu", should_stop=lambda: True)  # recover, then stop at once
        assert sorted(summary.recovered_jobs) == [j.id for j in claimed]
        assert not any(p.exists() for p in orphans) and keep.exists()
        assert all(j.state == "queued" for j in list_jobs(ws.db))

