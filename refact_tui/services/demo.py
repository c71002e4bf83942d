"""`refact demo`: a complete offline run on a tiny random pipeline (no GPU, no downloads)."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.events import ProgressCallback, StopCheck
from engine.hparams import ReFACTHParams

DATASETS = Path(__file__).resolve().parents[2] / "datasets"
SAMPLE_EDITS = DATASETS / "sample_edits.jsonl"
# Layer 2 of the 4-layer tiny encoder; few steps and a small corpus sample keep the demo to seconds.
# The tiny random encoder reacts weakly to a layer-2 change: a larger step and a lighter weight decay
# than the paper's make the loss curve visibly fall within a short demo.
DEMO_HPARAMS = ReFACTHParams(layer=2, lr=0.5, max_steps=40, prob_threshold=0.95, weight_decay=0.01)
DEMO_STATS_SAMPLES = 200
# Image evaluation in the demo: a tiny random judge, 2 seeds, 4 denoising steps at the tiny
# pipeline's 64x64; the numbers mean nothing, but every panel and the grids fill in.
DEMO_EVAL_SEEDS = 2
DEMO_EVAL_STEPS = 4


@dataclass
class DemoResult:
    """What the demo built and did."""

    root: Path
    model_path: Path
    queued: int
    summary: object                 # WorkerSummary
    edits: list = field(default_factory=list)   # EditRow of the history
    seconds: float = 0.0
    evaluation: object | None = None             # EvalReport of the whole history, when evaluated


def run_demo(root: Path | None = None, *, edits_file: Path | None = None, limit: int | None = None,
             hparams: ReFACTHParams = DEMO_HPARAMS, stats_samples: int = DEMO_STATS_SAMPLES,
             on_event=None, on_progress: ProgressCallback | None = None,
             should_stop: StopCheck | None = None, evaluate: bool = True,
             on_eval_progress: ProgressCallback | None = None) -> DemoResult:
    """Build the tiny pipeline, init a workspace at `root` (default: a new temp folder), queue the
    sample edits, compute C on the shipped corpus, run the worker, and (``evaluate``) score the whole
    history in text and image space with a tiny random judge that becomes the workspace's judge.
    Returns the resulting history."""
    from engine.builder import build_pipeline
    from refact_tui.services.history import list_history
    from refact_tui.services.queue import import_requests
    from refact_tui.services.runner import run_worker
    from refact_tui.services.stats import compute_stats
    from refact_tui.services.workspace import init_workspace

    t0 = time.perf_counter()
    root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="refact-demo-"))
    model_path = root / "tiny-sd"
    build_pipeline(model_path, size="tiny")
    ws = init_workspace(root, model_path)
    try:
        report = import_requests(ws, Path(edits_file or SAMPLE_EDITS), hparams=hparams)
        if limit is not None:
            from store.jobs import list_jobs, remove_job

            for job in list_jobs(ws.db, states=["queued"])[limit:]:
                remove_job(ws.db, job.id)
        queued = len(_queued(ws))
        compute_stats(ws, layer=hparams.layer, samples=stats_samples, on_progress=on_progress, device="cpu")
        summary = run_worker(ws, device="cpu", on_event=on_event, should_stop=should_stop)
        edits = list_history(ws)
        evaluation = _evaluate(ws, root, on_eval_progress) if evaluate and summary.done else None
    finally:
        ws.close()
    del report
    return DemoResult(root, model_path, queued, summary, edits, time.perf_counter() - t0, evaluation)


def _evaluate(ws, root: Path, on_progress: ProgressCallback | None):
    from engine.evaluation.config import ImageEvalConfig
    from engine.evaluation.judge import build_random_judge
    from refact_tui.services.evaluation import JUDGE_META_KEY, EvalOptions, run_evaluation
    from store.db import set_meta

    set_meta(ws.db, JUDGE_META_KEY, build_random_judge(root / "tiny-judge"))
    image = ImageEvalConfig(seeds=DEMO_EVAL_SEEDS, grid_seeds=DEMO_EVAL_SEEDS, device="cpu")
    options = EvalOptions(history=True, image=image.with_generation(steps=DEMO_EVAL_STEPS, batch_size=16))
    return run_evaluation(ws, options, on_progress=on_progress)


def _queued(ws) -> list:
    from store.jobs import list_jobs

    return list_jobs(ws.db, states=["queued"])
