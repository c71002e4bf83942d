"""`refact run --batch N --insert sequential --null-space --rounds R`: settings, one-line errors, a worker run."""

from __future__ import annotations

import pytest
from worker_helpers import new_workspace, queue, sample_requests


def test_rounds_default_only_for_the_modes_that_can_repeat():
    from engine.methods.refact.hparams import HParamsError
    from refact_tui.services.worker_types import DEFAULT_ROUNDS, BatchSettings

    assert BatchSettings(size=2, insert="joint").insert_config().rounds == DEFAULT_ROUNDS
    assert BatchSettings(size=2, insert="sequential", rounds=3).insert_config().rounds == 3
    assert BatchSettings(size=2, insert="spread").insert_config().rounds == 1
    for kw, word in (({"insert": "spread", "rounds": 2}, "--rounds applies to --insert joint and sequential"),
                     ({"insert": "joint", "rounds": 0}, "--rounds must be an integer in 1..10"),
                     ({"insert": "sequential", "rounds": True}, "--rounds must be an integer")):
        with pytest.raises(HParamsError, match=word):
            BatchSettings(size=2, **kw).validate()


def test_cli_rounds_errors_are_one_line_and_claim_nothing(tmp_path, model_dir):
    from typer.testing import CliRunner

    from refact_tui.cli.main import app
    from refact_tui.services.workspace import Workspace
    from store.jobs import list_jobs

    with new_workspace(tmp_path / "w", model_dir) as ws:
        queue(ws, sample_requests(2))
    runner = CliRunner()
    for args, word in ((["--rounds", "2"], "need --batch"),
                       (["--batch", "2", "--insert", "rank-one", "--rounds", "2"], "--rounds applies"),
                       (["--batch", "2", "--rounds", "11"], "--rounds must be an integer in 1..10")):
        res = runner.invoke(app, ["--workspace", str(tmp_path / "w"), "run", "--device", "cpu", *args])
        assert res.exit_code == 2
        out = (res.stderr if hasattr(res, "stderr") and res.stderr else res.output).strip()
        assert word in out and len(out.splitlines()) == 1, out
    ws = Workspace.open(tmp_path / "w", read_only=True)
    assert all(j.state == "queued" and j.attempts == 0 for j in list_jobs(ws.db))


def test_a_sequential_null_space_batch_runs_as_one_edit(tmp_path, model_dir):
    from refact_tui.services.runner import run_worker
    from refact_tui.services.worker_types import BatchSettings
    from store.edits import list_edits

    with new_workspace(tmp_path / "w", model_dir) as ws:
        queue(ws, sample_requests(3))
        settings = BatchSettings(size=3, insert="sequential", null_space=True, rounds=2)
        summary = run_worker(ws, device="cpu", batch=settings, text_metrics=False)
        assert summary.done == 3 and summary.failed == 0, summary.failures
        (edit,) = list_edits(ws.db, ws.history().id)
        assert "sequential" in edit.request.name
