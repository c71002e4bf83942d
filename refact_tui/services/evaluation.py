"""Evaluation use-cases: text-space metrics after every edit and on demand, image-space
evaluations, all written to the workspace store as they accumulate (final=0 rows while running,
final=1 rows when complete) so the TUI panels show live progress.

Metric names (space "text" or "image"): efficacy, generality, generality_75, generality_90,
specificity, f1 (= 2GS/(G+S)), gmean (= sqrt(G*S)), p_target (text only); image runs add
baseline_* / oracle_* variants, clip_score_before / clip_score (quality) and fid when available.
After an edit N, earlier edits j get retention_efficacy / retention_generality (measured at head N)
and edit N gets ``retention`` = mean retention_efficacy of the earlier edits. Whole-history
aggregates of ``--history`` runs are stored with edit_id NULL.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.base_weights import base_fc2_of
from engine.evaluation.config import ImageEvalConfig, TextEvalConfig
from engine.evaluation.errors import EvaluationError
from engine.evaluation.scoring import retention
from engine.evaluation.text_metrics import FeatureCache, TextMetrics, text_metrics
from engine.events import Progress, ProgressCallback

# Frozen (base-encoder) features per loaded text encoder, so the worker encodes each text once.
_FROZEN: "weakref.WeakKeyDictionary[Any, FeatureCache]" = weakref.WeakKeyDictionary()


@dataclass
class EvalSummary:
    """What an evaluation wrote: its run ids and the final metric values per edit (None = history)."""

    eval_run_ids: list[int] = field(default_factory=list)
    metrics: dict[int | None, dict[str, float]] = field(default_factory=dict)
    grids: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class _StoreSink:
    """engine.evaluation.image_metrics.MetricSink writing to the workspace store."""

    def __init__(self, ws, run_id: int, space: str, summary: EvalSummary):
        self.ws, self.run_id, self.space, self.summary = ws, run_id, space, summary

    def metric(self, edit_id, name, value, std, n, total, final) -> None:
        from store.metrics import record_metric

        record_metric(self.ws.db, eval_run_id=self.run_id, edit_id=edit_id, space=self.space, name=name,
                      value=float(value), std=std, n=int(n), total=int(total), final=bool(final))
        if final:
            self.summary.metrics.setdefault(edit_id, {})[name] = float(value)

    def artifact(self, edit_id, kind, path, sha256, nbytes, meta) -> None:
        from store.artifacts import add_artifact

        owner = ("edit", edit_id) if edit_id is not None else ("eval_run", self.run_id)
        add_artifact(self.ws.db, owner[0], owner[1], kind, self.ws.relative(path), sha256=sha256, bytes=nbytes,
                     meta={**meta, "eval_run_id": self.run_id})


def frozen_features(model) -> FeatureCache:
    """The base encoder's features of ``model`` (fc2 swapped to LoadedModel.base_fc2 while encoding)."""
    cache = _FROZEN.get(model.text_encoder)
    if cache is None:
        cache = FeatureCache.frozen(model, base_fc2_of(model))
        _FROZEN[model.text_encoder] = cache
    return cache


def _similarity(edit, config: TextEvalConfig) -> tuple[str, float]:
    return (config.similarity or edit.hparams.similarity,
            config.temperature if config.temperature is not None else edit.hparams.temperature)


def _text_of(model, frozen: FeatureCache, edit, config: TextEvalConfig) -> TextMetrics:
    sim, temp = _similarity(edit, config)
    return text_metrics(model, frozen, edit.request, similarity=sim, temperature=temp)


def _record_all(sink: _StoreSink, edit_id: int | None, tm: TextMetrics) -> None:
    n = 1 + tm.n_positives + tm.n_negatives
    for name, value in tm.values().items():
        sink.metric(edit_id, name, value, None, n, n, True)


def record_text_metrics(ws, model, edit_row, config: TextEvalConfig = TextEvalConfig()) -> EvalSummary:
    """Called by the worker after every edit: text metrics of ``edit_row`` at the new head, and the
    retention of every earlier applied edit of its history at that head."""
    from store.edits import applied_edits
    from store.metrics import finish_eval_run, start_eval_run

    earlier = [e for e in applied_edits(ws.db, edit_row.history_id, edit_row.seq) if e.seq < edit_row.seq]
    run = start_eval_run(ws.db, edit_row.history_id, edit_row.seq, "text", {
        "trigger": "after_edit", "edit_id": edit_row.id, "similarity": _similarity(edit_row, config)[0],
        "history_id": edit_row.history_id, "head_seq": edit_row.seq, "retention_of": [e.id for e in earlier],
    })
    summary = EvalSummary(eval_run_ids=[run.id])
    sink = _StoreSink(ws, run.id, "text", summary)
    try:
        frozen = frozen_features(model)
        _record_all(sink, edit_row.id, _text_of(model, frozen, edit_row, config))
        kept: list[float] = []
        for k, e in enumerate(earlier, 1):
            tm = _text_of(model, frozen, e, config)
            sink.metric(e.id, "retention_efficacy", tm.efficacy, None, 1, 1, True)
            if tm.generality is not None:
                sink.metric(e.id, "retention_generality", tm.generality, None, tm.n_positives, tm.n_positives, True)
            kept.append(tm.efficacy)
            sink.metric(edit_row.id, "retention", retention(kept), None, k, len(earlier), k == len(earlier))
    except Exception as exc:
        finish_eval_run(ws.db, run.id, "failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise
    finish_eval_run(ws.db, run.id, "done")
    return summary


def _targets(ws, edit_id: int | None, history: bool):
    """(history row, applied edits to evaluate) at the current history's head."""
    from store.edits import applied_edits
    from store.histories import current_history

    hist = current_history(ws.db)
    applied = applied_edits(ws.db, hist.id, hist.head_seq) if hist.head_seq > 0 else []
    if not applied:
        raise EvaluationError(f"history {hist.name!r} has no applied edits at its head; run some edits first")
    if history:
        return hist, applied
    if edit_id is None:
        return hist, [applied[-1]]
    match = [e for e in applied if e.id == edit_id]
    if not match:
        raise EvaluationError(
            f"edit {edit_id} is not an applied edit of history {hist.name!r} up to its head (seq {hist.head_seq}); "
            "see `refact history` for edit ids"
        )
    return hist, match


def run_text_eval(ws, edit_id: int | None = None, history: bool = False, on_progress: ProgressCallback | None = None,
                  config: TextEvalConfig = TextEvalConfig(), device: str = "auto") -> EvalSummary:
    """Text-space metrics of one edit (default: the head edit) or of every applied edit, at the head."""
    from engine.evaluation.scoring import EditScores, summarize
    from engine.evaluation.text_metrics import text_scores
    from refact_tui.services.state import load_history_model
    from store.metrics import finish_eval_run, start_eval_run

    hist, edits = _targets(ws, edit_id, history)
    state = load_history_model(ws, hist.id, device=device)
    model = state.model
    run = start_eval_run(ws.db, hist.id, hist.head_seq, "text", {
        "trigger": "manual", "history_id": hist.id, "history": hist.name, "head_seq": hist.head_seq,
        "edit_ids": [e.id for e in edits], "config": config.to_dict(),
    })
    summary = EvalSummary(eval_run_ids=[run.id])
    sink = _StoreSink(ws, run.id, "text", summary)
    try:
        frozen = FeatureCache.frozen(model, base_fc2_of(model))
        rows: list[EditScores] = []
        for k, e in enumerate(edits, 1):
            sim, temp = _similarity(e, config)
            scores = text_scores(model, frozen, e.request, similarity=sim, temperature=temp)
            rows.append(scores)
            _record_all(sink, e.id, text_metrics(model, frozen, e.request, similarity=sim, temperature=temp))
            if len(edits) > 1:
                agg = summarize(rows)
                for m in agg.values():
                    sink.metric(None, m.name, m.value, m.std, k, len(edits), k == len(edits))
            if on_progress is not None:
                on_progress(Progress("text-eval", k, len(edits), f"edit {e.seq}"))
    except Exception as exc:
        finish_eval_run(ws.db, run.id, "failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise
    finish_eval_run(ws.db, run.id, "done")
    return summary


def _image_run_config(config: ImageEvalConfig, hist, edits, model, judge_label: str, world: int) -> dict[str, Any]:
    from engine.evaluation.generation import resolution

    pipe = model.pipeline
    h, w = resolution(pipe, config.generation)
    return {
        "trigger": "manual", "history_id": hist.id, "history": hist.name, "head_seq": hist.head_seq,
        "edit_ids": [e.id for e in edits], "judge": judge_label, "seeds": config.seed_list,
        "steps": config.generation.steps, "guidance": config.generation.guidance,
        "scheduler": type(pipe.scheduler).__name__, "resolution": [h, w], "world_size": world,
        "device": str(model.device), "config": config.to_dict(),
    }


def run_image_eval(ws, edit_id: int | None = None, history: bool = False, config: ImageEvalConfig = ImageEvalConfig(),
                   on_progress: ProgressCallback | None = None) -> EvalSummary:
    """Image-space metrics (judge-scored generations) of one edit or every applied edit at the head.

    Runs under ``accelerate launch`` as well: every process renders its share of the batches and
    only the main process writes to the store.
    """
    from engine.evaluation.distributed import eval_device, is_main_process, process_info
    from engine.evaluation.image_metrics import EvalTarget, evaluate_images
    from engine.evaluation.judge import load_judge
    from engine.evaluation.quality import fid_status, load_captions
    from refact_tui.services.state import load_history_model
    from store.events import log_event
    from store.metrics import finish_eval_run, start_eval_run

    hist, edits = _targets(ws, edit_id, history)
    device = eval_device(config.device)
    model = load_history_model(ws, hist.id, device=str(device), with_pipeline=True).model
    if model.pipeline is None:
        raise EvaluationError(f"the workspace model at {model.path} is a text encoder only; image evaluation needs "
                              "a Stable Diffusion pipeline (use --text-only)")
    judge = load_judge(config.judge, device)
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
                             _image_run_config(config, hist, edits, model, judge.name, process_info()[1]))
        summary.eval_run_ids.append(run.id)
        sink = _StoreSink(ws, run.id, "image", summary)
        grid_dir = Path(ws.images_dir) / f"eval-{run.id}"
    targets = [EvalTarget(e.id, e.request, f"edit {e.seq}") for e in edits]
    try:
        res = evaluate_images(model, targets, config, judge=judge, base_fc2=base_fc2_of(model), sink=sink,
                              on_progress=on_progress, grid_dir=grid_dir, captions=captions)
    except Exception as exc:
        if run is not None:
            finish_eval_run(ws.db, run.id, "failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise
    summary.grids = list(res.grids)
    if res.quality is not None and res.quality.fid is None and res.quality.fid_note not in summary.notes:
        summary.notes.append(res.quality.fid_note)
    if run is not None:
        for note in summary.notes:
            log_event(ws.db, "eval", f"eval run {run.id}: {note}", level="warning")
        finish_eval_run(ws.db, run.id, "done")
    return summary
