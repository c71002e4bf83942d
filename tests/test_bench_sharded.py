"""`refact bench` rows and vectorised v* over 2 accelerate CPU processes store what one process stores."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from worker_helpers import new_workspace, sample_requests

SCRIPT = Path(__file__).with_name("dist_bench_script.py")
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_bench_on_two_processes_equals_one(model_dir, tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if accelerate is None:
        pytest.skip("accelerate launcher not installed")
    reqs = [replace(r, positives=r.positives[:1], negatives=r.negatives[:1]) for r in sample_requests(3)]
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(r.to_dict()) for r in reqs) + "\n", encoding="utf-8")
    root = tmp_path / "w"
    new_workspace(root, model_dir).close()
    port = str(_free_port())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "ACCELERATE_DISABLE_RICH": "1", "MASTER_PORT": port}
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port,
           str(SCRIPT), str(root), str(rows), str(tmp_path / "two.json")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
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
