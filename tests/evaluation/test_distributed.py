"""1 vs 2 accelerate CPU processes give exactly the same evaluation results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("dist_eval_script.py")


def _launch(n: int, pipe: Path, judge_spec: str, out: Path) -> dict:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if accelerate is None:
        pytest.skip("accelerate launcher not installed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "ACCELERATE_DISABLE_RICH": "1", "MASTER_PORT": str(29500 + os.getpid() % 1000 + n)}
    # `--cpu` makes accelerate use its single-process launcher (multi-CPU needs mpirun), so the
    # processes are spawned through the torchrun path; PartialState(cpu=True) then forms a gloo group.
    mode = ["--multi_gpu"] if n > 1 else ["--cpu"]
    cmd = [accelerate, "launch", *mode, "--num_processes", str(n), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", env["MASTER_PORT"],
           str(SCRIPT), str(pipe), judge_spec, str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_one_vs_two_processes_identical(tiny_pipeline_path, judge_spec, tmp_path):
    # the single-process reference runs in this process (same code path, 1 thread), saving a launch
    sys.path.insert(0, str(SCRIPT.parent))
    from dist_eval_script import run

    one = json.loads(json.dumps(run(str(tiny_pipeline_path), judge_spec)))
    two = _launch(2, tiny_pipeline_path, judge_spec, tmp_path / "two.json")
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert len(one["items"]) == 3 * 3
    assert one["items"] == two["items"]  # exact floats, same order
    assert one["metrics"] == two["metrics"]
