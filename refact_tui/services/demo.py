"""`refact demo`: ReFACT edits taking on real pretrained weights, offline, in under a minute.

The demo workspace's base model is all-MiniLM-L6-v2 (``minilm``, engine.packaged_models): the sample
RoAD-style facts are queued with the workspace's defaults (its normalised-feature temperature lets
every edit reach the 0.99 early stop), run, and scored in text space. ``images=True`` adds a plumbing
check of the image path on a tiny random pipeline and judge in a second workspace: the numbers of a
random model mean nothing, only that every step runs.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.events import ProgressCallback, StopCheck
from engine.methods.refact.hparams import ReFACTHParams

DATASETS = Path(__file__).resolve().parents[2] / "datasets"
SAMPLE_EDITS = DATASETS / "sample_edits.jsonl"
DEMO_MODEL = "minilm"
# C over this many corpus captions: enough for MiniLM's specificity, a few seconds on one CPU thread.
DEMO_STATS_SAMPLES = 1000
PLUMBING_FOLDER = "plumbing-check"
# The plumbing check: 2 edits on the tiny random pipeline (layer 2 of 4, a larger step and lighter
# weight decay so its loss moves at all), 1 seed, 4 denoising steps at 64x64 with a tiny random judge.
PLUMBING_EDITS = 2
PLUMBING_HPARAMS = ReFACTHParams(layer=2, lr=0.5, max_steps=40, prob_threshold=0.95, weight_decay=0.01)
PLUMBING_STATS_SAMPLES = 200
PLUMBING_EVAL_SEEDS = 1
PLUMBING_EVAL_STEPS = 4


@dataclass
class DemoResult:
    """What one demo workspace built and did (the real-weights one, or the image plumbing check)."""

    root: Path
    model_path: Path
    queued: int
    summary: object                 # WorkerSummary
    edits: list = field(default_factory=list)   # EditRow of the history
    seconds: float = 0.0
    evaluation: object | None = None             # EvalReport of the whole history, when evaluated
    plumbing: "DemoResult | None" = None         # the image plumbing check (``images=True``)


@dataclass(frozen=True)
class DemoCallbacks:
    """Where the demo reports progress (all optional)."""

    on_event: object | None = None                      # WorkerEvent callback
    on_progress: ProgressCallback | None = None         # second-moment progress
    should_stop: StopCheck | None = None
    on_eval_progress: ProgressCallback | None = None


def run_demo(root: Path | None = None, *, edits_file: Path | None = None, limit: int | None = None,
             images: bool = False, evaluate: bool = True, callbacks: DemoCallbacks = DemoCallbacks()) -> DemoResult:
    """Init a workspace at ``root`` (default: a new temp folder) on the packaged MiniLM weights, queue
    the sample facts (the first ``limit``), compute C, run the worker, score the history in text space
    (``evaluate``) and, with ``images``, run the image plumbing check in ``root/plumbing-check``."""
    t0 = time.perf_counter()
    root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="refact-demo-"))
    result = _run_workspace(root, DEMO_MODEL, edits_file=edits_file, limit=limit, hparams=None,
                            samples=DEMO_STATS_SAMPLES, callbacks=callbacks,
                            evaluate=(lambda ws: _text_evaluation(ws, callbacks)) if evaluate else None)
    if images and not result.summary.stopped:
        result.plumbing = run_plumbing_check(root / PLUMBING_FOLDER, edits_file=edits_file, callbacks=callbacks)
    result.seconds = time.perf_counter() - t0
    return result


def run_plumbing_check(root: Path, *, edits_file: Path | None = None,
                       callbacks: DemoCallbacks = DemoCallbacks()) -> DemoResult:
    """The image path end to end on a tiny random pipeline: 2 edits, image evaluation with 1 seed
    and a tiny random judge that becomes the workspace's judge. Its numbers mean nothing."""
    from engine.builder import build_pipeline

    t0 = time.perf_counter()
    model_path = root / "tiny-sd"
    build_pipeline(model_path, size="tiny")
    result = _run_workspace(root, model_path, edits_file=edits_file, limit=PLUMBING_EDITS,
                            hparams=PLUMBING_HPARAMS, samples=PLUMBING_STATS_SAMPLES, callbacks=callbacks,
                            evaluate=lambda ws: _image_evaluation(ws, root, callbacks))
    result.seconds = time.perf_counter() - t0
    return result


def _run_workspace(root: Path, model: str | Path, *, edits_file: Path | None, limit: int | None,
                   hparams: ReFACTHParams | None, samples: int, callbacks: DemoCallbacks, evaluate) -> DemoResult:
    from refact_tui.services.history import list_history
    from refact_tui.services.queue import import_requests
    from refact_tui.services.runner import run_worker
    from refact_tui.services.stats import compute_stats
    from refact_tui.services.workspace import init_workspace
    from store.jobs import list_jobs, remove_job

    ws = init_workspace(root, model)
    try:
        import_requests(ws, Path(edits_file or SAMPLE_EDITS), hparams=hparams)
        if limit is not None:
            for job in list_jobs(ws.db, states=["queued"])[limit:]:
                remove_job(ws.db, job.id)
        queued = len(list_jobs(ws.db, states=["queued"]))
        layer = hparams.layer if hparams is not None else None
        compute_stats(ws, layer=layer, samples=samples, on_progress=callbacks.on_progress, device="cpu")
        summary = run_worker(ws, device="cpu", on_event=callbacks.on_event, should_stop=callbacks.should_stop)
        edits = list_history(ws)
        evaluation = evaluate(ws) if evaluate is not None and summary.done else None
        model_path = model if isinstance(model, Path) else _base_path(ws)
    finally:
        ws.close()
    return DemoResult(root, model_path, queued, summary, edits, 0.0, evaluation)


def _base_path(ws) -> Path:
    from store.base_models import get_base_model

    return Path(get_base_model(ws.db, ws.history().base_model_id).path)


def _text_evaluation(ws, callbacks: DemoCallbacks):
    from refact_tui.services.evaluation import EvalOptions, run_evaluation

    return run_evaluation(ws, EvalOptions(history=True, text_only=True), on_progress=callbacks.on_eval_progress)


def _image_evaluation(ws, root: Path, callbacks: DemoCallbacks):
    from engine.evaluation.config import ImageEvalConfig
    from engine.evaluation.judge import build_random_judge
    from refact_tui.services.evaluation import JUDGE_META_KEY, EvalOptions, run_evaluation
    from store.db import set_meta

    set_meta(ws.db, JUDGE_META_KEY, build_random_judge(root / "tiny-judge"))
    image = ImageEvalConfig(seeds=PLUMBING_EVAL_SEEDS, grid_seeds=PLUMBING_EVAL_SEEDS, device="cpu")
    options = EvalOptions(history=True, image=image.with_generation(steps=PLUMBING_EVAL_STEPS, batch_size=16))
    return run_evaluation(ws, options, on_progress=callbacks.on_eval_progress)
