"""`refact queue add --method time|uce` and mixed-method histories through the worker."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner
from worker_helpers import new_workspace, queue, sample_requests

from refact_tui.cli.main import app

runner = CliRunner()


def test_time_and_uce_jobs_join_a_refact_history_and_rebuild_exactly(tmp_path, model_dir):
    from engine.methods import MethodError
    from refact_tui.services.runner import run_worker
    from refact_tui.services.working_model import load_deltas, load_history_model
    from store.edits import applied_edits

    root = tmp_path / "w"
    ws = new_workspace(root, model_dir)
    with ws:
        queue(ws, sample_requests(1))
    for args in (["--method", "time"], ["--method", "uce", "--hp", "lam=0.5", "--hp", 'preserve=["A duke"]']):
        r = runner.invoke(app, ["-w", str(root), "queue", "add", "-p", "A banana", "-s", "A banana",
                                "-t", "A blue banana", "--allow-duplicate", *args])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["-w", str(root), "queue", "add", "-p", "A banana", "-s", "A banana", "-t", "A pear",
                            "--method", "rome"])
    assert r.exit_code == 1 and "unknown edit method 'rome'" in r.stderr
    with _open(root) as ws:
        summary = run_worker(ws, device="cpu")
        assert summary.done == 3, summary.failures
        hist = ws.history()
        edits = applied_edits(ws.db, hist.id, hist.head_seq)
        assert [e.request.extra.get("method", "refact") for e in edits] == ["refact", "time", "uce"]
        assert json.loads(edits[2].request.extra["method_hparams"])["preserve"] == ["A duke"]
        deltas = load_deltas(ws, edits)
        assert deltas[1].components == ["unet"] and all("attn2.to_v" in u.module for u in deltas[1].updates)
        assert {u.module.rsplit(".", 1)[1] for u in deltas[2].updates} == {"to_k", "to_v"}
        # the rebuilt head = base pipeline + all three deltas; seq 1 has no UNet change
        head = load_history_model(ws, device="cpu").model
        base = load_history_model(ws, device="cpu", upto_seq=1, with_pipeline=True).model
        name = deltas[1].updates[0].module
        w_head = head.pipeline.unet.get_submodule(name).weight
        w_base = base.pipeline.unet.get_submodule(name).weight
        want = w_base + deltas[1].updates[0].matrix()
        u2 = next((u for u in deltas[2].updates if u.module == name), None)
        want = want + (u2.matrix() if u2 is not None else 0)
        assert float((w_head - want).abs().max().detach()) < 1e-6 and not torch.equal(w_head, w_base)
    try:
        from engine.request import EditRequest
        from refact_tui.services.methods import with_method

        with_method(EditRequest("a", "b", "c"), "refact", {"layer": 1})
        raise AssertionError("refused expected")
    except MethodError as exc:
        assert "--hp" in str(exc)


def _open(root):
    from refact_tui.services.workspace import Workspace

    return Workspace.open(root)


def test_batch_worker_runs_closed_form_jobs_alone_and_batches_only_refact(tmp_path, model_dir):
    """`run --batch` never feeds a TIME job to the ReFACT batch solver: it runs alone as a plain edit,
    while the ReFACT jobs queued around it share one batch (a batch gathers the same-hparams jobs)."""
    from refact_tui.services.runner import run_worker
    from refact_tui.services.worker_types import BatchSettings
    from store.edits import applied_edits

    root = tmp_path / "w"
    with new_workspace(root, model_dir) as ws:
        queue(ws, sample_requests(3)[:1])
    r = runner.invoke(app, ["-w", str(root), "queue", "add", "-p", "A banana", "-s", "A banana",
                            "-t", "A blue banana", "--method", "time"])
    assert r.exit_code == 0, r.output
    with _open(root) as ws:
        queue(ws, sample_requests(3)[1:])
        summary = run_worker(ws, device="cpu", batch=BatchSettings(size=4, insert="joint"))  # tiny model: rank-one is refused
        assert summary.done == 4 and summary.failed == 0, summary.failures
        hist = ws.history()
        edits = applied_edits(ws.db, hist.id, hist.head_seq)
        assert [(e.kind, e.request.extra.get("method", "refact")) for e in edits] == [("batch", "refact"), ("edit", "time")]
        n_batched = ws.db.execute("SELECT COUNT(*) FROM batch_requests WHERE edit_id = ?", [edits[0].id]).fetchone()[0]
        assert n_batched == 3
