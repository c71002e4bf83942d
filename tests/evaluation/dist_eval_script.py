"""Run a small image evaluation under `accelerate launch`; the main process writes JSON.

Usage: dist_eval_script.py PIPELINE_DIR JUDGE_SPEC OUT_JSON
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.evaluation.config import GenerationConfig, ImageEvalConfig  # noqa: E402
from engine.evaluation.distributed import eval_device, is_main_process, process_info  # noqa: E402
from engine.evaluation.image_metrics import EvalTarget, evaluate_images  # noqa: E402
from engine.evaluation.judge import load_judge  # noqa: E402
from engine.models import load_model  # noqa: E402
from engine.request import EditRequest, Probe  # noqa: E402

REQ = EditRequest(
    prompt="a banana", source="a banana", target="a blue banana",
    positives=(Probe("a bowl of bananas", "a bowl of bananas", "a bowl of blue bananas"),),
    negatives=(Probe("an apple", "an apple", "a blue apple"),),
)


def run(pipe_dir: str, judge_spec: str) -> dict:
    """Evaluate REQ on 3 seeds (single-threaded torch, as the launched processes use)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        device = eval_device("cpu")
        model = load_model(pipe_dir, device=str(device), with_pipeline=True)
        config = ImageEvalConfig(seeds=3, generation=GenerationConfig(steps=2, batch_size=2), baseline=False, grids=False)
        res = evaluate_images(model, [EvalTarget(1, REQ)], config, judge=load_judge(judge_spec, device))
    finally:
        torch.set_num_threads(threads)
    return {
        "world_size": process_info()[1],
        "items": [[r.item.variant, r.item.role, r.item.index, r.item.seed, r.p_a, r.p_b] for r in res.results],
        "metrics": {k: [m.value, m.std, m.n] for k, m in res.per_edit[0].items()},
    }


def main() -> None:
    pipe_dir, judge_spec, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    result = run(pipe_dir, judge_spec)
    if is_main_process():
        out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
