"""`refact eval` on a batch edit scores every request of the batch (issue 16): per-request rows and
their mean, the same aggregate the worker recorded, never one request's numbers."""

from __future__ import annotations

import json

from typer.testing import CliRunner
from worker_helpers import new_workspace, queue, sample_requests

from refact_tui.cli.main import app

runner = CliRunner()
N = 5


def test_eval_history_of_a_batch_edit_reports_every_request_and_the_workers_mean(tmp_path, model_dir):
    from refact_tui.services.runner import run_worker
    from refact_tui.services.worker_types import BatchSettings
    from store.batches import batch_requests
    from store.edits import list_edits
    from store.metrics import latest_metrics

    root = tmp_path / "w"
    with new_workspace(root, model_dir) as ws:
        queue(ws, sample_requests(N))
        assert run_worker(ws, device="cpu", batch=BatchSettings(size=N, insert="joint")).done == N
        (edit,) = list_edits(ws.db, ws.history().id)
        assert edit.kind == "batch"
        rows = batch_requests(ws.db, edit.id)
        worker = {m.name: m for m in latest_metrics(ws.db, edit.id) if not m.slot}
    assert len(rows) == N and worker["efficacy"].n == N

    r = runner.invoke(app, ["--workspace", str(root), "eval", "--history", "--text-only", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    lines = {m["name"]: m for m in out["lines"]}
    # the whole-edit rows: n = 5 requests, each value the mean the worker recorded
    for name in ("efficacy", "p_target", "generality", "specificity", "f1"):
        assert lines[name]["n"] == N, name
        assert abs(lines[name]["text"] - worker[name].value) < 1e-6, (name, lines[name]["text"], worker[name].value)
        assert abs(lines[name]["std"] - worker[name].std) < 1e-6, name
    # per-request rows: one per request, each equal to what the worker kept for that request
    per = out["per_request"][str(edit.id)]
    assert len(per) == N
    for got, row in zip(per, rows):
        for name, value in row.metrics.items():
            assert abs(got[name] - value) < 1e-6, (name, got[name], value)
    assert abs(sum(p["p_target"] for p in per) / N - lines["p_target"]["text"]) < 1e-9

    # the eval wrote the same aggregate back: what `show` lists is still the mean over the 5 requests
    from refact_tui.services.workspace import Workspace

    with Workspace.open(root) as ws:
        after = {m.name: m for m in latest_metrics(ws.db, edit.id) if not m.slot}
    assert after["efficacy"].n == N
    assert abs(after["p_target"].value - worker["p_target"].value) < 1e-6

    table = runner.invoke(app, ["--workspace", str(root), "eval", "--history", "--text-only"])
    assert table.exit_code == 0, table.output
    assert "per request" in table.output
