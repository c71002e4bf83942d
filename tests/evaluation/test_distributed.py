"""1 vs 2 accelerate CPU processes give exactly the same evaluation results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from accelerate_launch import launch

SCRIPT = Path(__file__).with_name("dist_eval_script.py")


def _launch(n: int, pipe: Path, judge_spec: str, out: Path) -> dict:
    launch(n, [str(SCRIPT), str(pipe), judge_spec, str(out)])
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
