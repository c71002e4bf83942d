"""Image-space evaluation of edits: judge-scored generations of the edited pipeline, written to the
store as they accumulate (split out of services/evaluation.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from engine.base_weights import base_weights_of
from engine.evaluation.config import ImageEvalConfig
from engine.evaluation.errors import EvaluationError
from engine.events import ProgressCallback
from refact_tui.services.eval_common import (
    EvalSummary,
    Kept,
    StoreSink,
    eval_targets,
    fail_run,
    is_main_process,
    record_retention,
    run_config,
)


def image_run_config(config: ImageEvalConfig, hist, edits, history: bool, model, judge_label: str,
                      world: int) -> dict[str, Any]:
    from engine.evaluation.generation import resolution

    pipe = model.pipeline
    h, w = resolution(pipe, config.generation)
    return {
        **run_config(hist, edits, history), "judge": judge_label, "seeds": config.seed_list,
        "steps": config.generation.steps, "guidance": config.generation.guidance,
        "scheduler": type(pipe.scheduler).__name__, "resolution": [h, w], "world_size": world,
        "device": str(model.device), "config": config.to_dict(),
    }


def _metric_totals(edits: Sequence, config: ImageEvalConfig) -> dict[str, int]:
    """Edited images expected per metric over all edits (drives the per-metric progress bars)."""
    totals = {
        "efficacy": config.seeds * len(edits),
        "generality": config.seeds * sum(len(e.request.positives) for e in edits),
        "specificity": config.seeds * sum(len(e.request.negatives) for e in edits),
    }
    return {k: v for k, v in totals.items() if v}


def run_image_eval(ws, edit_id: int | None = None, history: bool = False, config: ImageEvalConfig = ImageEvalConfig(),
                   on_progress: ProgressCallback | None = None, judge=None) -> EvalSummary:
    """Image-space metrics (judge-scored generations) of one edit or every applied edit at the head;
    ``history`` also stores the retention metrics. ``judge``: an already loaded config.judge.

    Runs under ``accelerate launch`` as well: every process renders its share of the batches and
    only the main process writes to the store.
    """
    from engine.evaluation.distributed import eval_device, process_info
    from engine.evaluation.image_metrics import EvalTarget, evaluate_images
    from engine.evaluation.judge import load_judge
    from engine.evaluation.quality import fid_status, load_captions
    from refact_tui.services.working_model import load_history_model
    from store.events import log_event
    from store.metrics import finish_eval_run, start_eval_run

    hist, edits = eval_targets(ws, edit_id, history)
    _require_pipeline(ws, hist)
    config = with_workspace_judge(ws, config)
    device = eval_device(config.device)
    if judge is None:
        # The judge first: a missing judge is reported before the (slow) pipeline load.
        judge = load_judge(config.judge, device)
    model = load_history_model(ws, hist.id, device=str(device), with_pipeline=True).model
    if model.pipeline is None:
        raise EvaluationError(f"the workspace model at {model.path} is a text encoder only; image evaluation needs "
                              "a Stable Diffusion pipeline (use --text-only)")
    main = is_main_process()
    summary = EvalSummary()
    captions: list[str] = []
    if config.quality:
        try:
            from engine.covariance import default_corpus_path

            captions = load_captions(default_corpus_path(), config.quality_captions)
        except (ImportError, OSError) as exc:
            summary.notes.append(f"quality check skipped: no caption corpus ({exc})")
        if captions:
            ok, why = fid_status()
            if not ok:
                summary.notes.append(why)
    run = sink = grid_dir = None
    if main:
        run = start_eval_run(ws.db, hist.id, hist.head_seq, "image",
                             image_run_config(config, hist, edits, history, model, judge.name, process_info()[1]))
        summary.eval_run_ids.append(run.id)
        sink = StoreSink(ws, run.id, "image", summary, on_progress, _metric_totals(edits, config))
        grid_dir = Path(ws.images_dir) / f"eval-{run.id}"
    targets = [EvalTarget(e.id, e.request, f"edit {e.seq}") for e in edits]
    try:
        res = evaluate_images(model, targets, config, judge=judge, base_slots=base_weights_of(model), sink=sink,
                              on_progress=on_progress, grid_dir=grid_dir, captions=captions)
        if sink is not None and history and len(edits) > 1:
            kept = {}
            for t, e in enumerate(edits):
                eff, gen = res.per_edit[t]["efficacy"], res.per_edit[t].get("generality")
                kept[e.id] = Kept(eff.value, eff.n, gen.value if gen else None, gen.n if gen else 0)
            record_retention(sink, edits, kept)
    except Exception as exc:
        if run is not None:
            fail_run(run.id, ws, exc)
        raise
    summary.grids = list(res.grids)
    if res.quality is not None and res.quality.fid is None and res.quality.fid_note not in summary.notes:
        summary.notes.append(res.quality.fid_note)
    if run is not None:
        for note in summary.notes:
            log_event(ws.db, "eval", f"eval run {run.id}: {note}", level="warning")
        finish_eval_run(ws.db, run.id, "done")
    return summary


# Workspace setting: the judge used when neither --judge nor $REFACT_JUDGE names one.
JUDGE_META_KEY = "eval_judge"


def with_workspace_judge(ws, config: ImageEvalConfig) -> ImageEvalConfig:
    """``config`` with the workspace's judge filled in when it names none (explicit and env win)."""
    import os

    from engine.evaluation.judge import JUDGE_ENV
    from store.db import get_meta

    if config.judge or os.environ.get(JUDGE_ENV):
        return config
    spec = get_meta(ws.db, JUDGE_META_KEY)
    return replace(config, judge=spec) if spec else config


def _require_pipeline(ws, hist) -> None:
    """Image evaluation needs a diffusion pipeline; say so before loading the judge or the model."""
    from store.base_models import get_base_model

    base = get_base_model(ws.db, hist.base_model_id)
    if base.kind != "sd-pipeline":
        raise EvaluationError(f"the workspace model {base.source} is a text encoder only; image evaluation needs "
                              "a Stable Diffusion pipeline (use --text-only)")
