"""`accelerate launch -m refact_tui --workspace W eval ...` with 2 CPU processes through the real CLI
entry: both processes render, only rank 0 writes SQLite and prints, and the stored final metrics
(and the grid's bytes) equal a single-process run exactly."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from accelerate_launch import launch, launcher
from typer.testing import CliRunner

EVAL_ARGS = ["eval", "--seeds", "2", "--steps", "1", "--size", "16", "--batch-size", "2", "--json"]


@pytest.fixture(scope="module")
def ws_root(tiny_pipeline_path, tmp_path_factory):
    """One applied edit with one positive and one negative probe: 2 seeds x 3 prompts x 2 variants."""
    from worker_helpers import new_workspace, queue, sample_requests

    from refact_tui.services.runner import run_worker

    req = sample_requests(1)[0]
    req = replace(req, positives=req.positives[:1], negatives=req.negatives[:1])
    root = tmp_path_factory.mktemp("acc") / "w"
    with new_workspace(root, tiny_pipeline_path) as ws:
        queue(ws, [req])
        assert run_worker(ws, device="cpu").done == 1
    return root


def _stored(root: Path, run_ids: dict) -> dict:
    """Final metric rows and grid checksums of the runs, plus how many runs the store holds."""
    from refact_tui.services.workspace import Workspace
    from store.artifacts import list_artifacts
    from store.metrics import get_eval_run, list_eval_runs, metrics_for_run

    with Workspace.open(root) as ws:
        out = {"n_runs": len(list_eval_runs(ws.db)), "world": get_eval_run(ws.db, run_ids["image"][0]).config["world_size"]}
        for space in ("text", "image"):
            (rid,) = run_ids[space]
            out[space] = sorted((m.edit_id, m.name, m.value, m.std, m.n, m.total)
                                for m in metrics_for_run(ws.db, rid) if m.final)
        edit_id = out["image"][0][0]
        out["grids"] = [a.sha256 for a in list_artifacts(ws.db, "edit", edit_id)
                        if a.kind == "grid" and a.meta.get("eval_run_id") == run_ids["image"][0]]
    return out


@pytest.mark.slow
def test_two_cpu_processes_through_the_cli_store_what_one_process_stores(ws_root, judge_spec):
    launcher()  # skips before the reference run when accelerate is missing
    from refact_tui.cli.main import app

    # single-process reference in this process, single-threaded like each launched process
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = CliRunner().invoke(app, ["--workspace", str(ws_root), *EVAL_ARGS, "--judge", judge_spec])
    finally:
        torch.set_num_threads(threads)
    assert r.exit_code == 0, r.output
    one = _stored(ws_root, json.loads(r.stdout)["run_ids"])

    proc = launch(2, ["-m", "refact_tui", "--workspace", str(ws_root), *EVAL_ARGS, "--judge", judge_spec],
                  timeout=300)
    assert proc.stdout.count('"run_ids"') == 1  # only rank 0 prints the report
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    two = _stored(ws_root, report["run_ids"])

    assert (one["world"], two["world"]) == (1, 2)
    assert two["n_runs"] == one["n_runs"] + 2  # one text and one image run: rank 1 wrote nothing
    assert len(one["image"]) == 14 and {row[4] for row in one["image"] if row[1].endswith("efficacy")} == {2}
    assert two["image"] == one["image"]  # exact floats
    assert two["text"] == one["text"]
    assert len(one["grids"]) == 1 and two["grids"] == one["grids"]  # bit-identical grid PNG
