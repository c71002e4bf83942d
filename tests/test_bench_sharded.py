"""`refact bench` rows and vectorised v* over 2 accelerate CPU processes store what one process stores."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from accelerate_launch import launch
from worker_helpers import new_workspace, sample_requests

SCRIPT = Path(__file__).with_name("dist_bench_script.py")


@pytest.mark.slow
def test_bench_on_two_processes_equals_one(model_dir, tmp_path):
    reqs = [replace(r, positives=r.positives[:1], negatives=r.negatives[:1]) for r in sample_requests(3)]
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(r.to_dict()) for r in reqs) + "\n", encoding="utf-8")
    root = tmp_path / "w"
    new_workspace(root, model_dir).close()
    launch(2, [str(SCRIPT), str(root), str(rows), str(tmp_path / "two.json")])
    two = json.loads((tmp_path / "two.json").read_text())

    sys.path.insert(0, str(SCRIPT.parent))
    from dist_bench_script import run

    one = run(str(root), str(rows))  # reads the references the 2-process run stored
    from refact_tui.services.workspace import Workspace
    from store.bench_runs import list_bench_runs

    with Workspace.open(root) as ws:
        assert len(list_bench_runs(ws.db)) == 2  # one run per launch: only the main process stored
    assert (one["world"], two["world"]) == (1, 2)
    assert two["run_id"] != one["run_id"]
    assert len(one["rows"]) == 3 and not any(r[1] for r in one["rows"])
    assert one["rows"] == two["rows"]  # exact scores, row order kept
