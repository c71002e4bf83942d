"""`refact run --batch N`: N queued jobs as one batch edit; records, rollback, bad input (issue 9)."""

from __future__ import annotations

import pytest

from worker_helpers import FAST, new_workspace, queue, rebuild_hash, sample_requests, spy_batch_preserve


def run_batch(ws, n, **kw):
    from refact_tui.services.batch_worker import BatchSettings
    from refact_tui.services.runner import run_worker

    events = []
    summary = run_worker(ws, device="cpu", batch=BatchSettings(size=n, **kw), on_event=events.append)
    return summary, events


@pytest.mark.parametrize("mode", ["joint"])  # rank-one batches: test_queue_ls_shows_batches_..., batch_of_one
def test_batch_is_one_edit_with_per_request_rows_and_rebuilds_bit_exact(tmp_path, model_dir, mode):
    from refact_tui.services.batch_worker import BatchFinished, BatchStarted, BatchStep
    from refact_tui.services.history import rollback
    from refact_tui.services.state import load_history_model
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
    from engine.hparams import HParamsError
    from refact_tui.services.batch_worker import BatchSettings
    from store.batches import BatchMixError, check_same_base
    from store.histories import create_history
    from store.jobs import list_jobs
    from store.base_models import get_base_model

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
        run_batch(ws, 2)
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
    from refact_tui.services.batch_worker import BatchSettings, BatchStep
    from refact_tui.services.runner import run_worker
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
