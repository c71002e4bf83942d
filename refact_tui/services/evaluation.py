"""Evaluation use-cases: text-space metrics after every edit and on demand, image-space
evaluations, all written to the workspace store as they accumulate (final=0 rows while running,
final=1 rows when complete) so the TUI panels show live progress.

Metric names (space "text" or "image"): efficacy, generality, generality_75, generality_90,
specificity, f1 (= 2GS/(G+S)), gmean (= sqrt(G*S)), p_target (text only); image runs add
baseline_* / oracle_* variants, clip_score_before / clip_score (quality) and fid when available.
After an edit N, earlier edits j get retention_efficacy / retention_generality (measured at head N)
and edit N gets ``retention`` = mean retention_efficacy of the earlier edits. Whole-history
aggregates of ``--history`` runs are stored with edit_id NULL. ``--history`` runs (text or image)
also store the retention metrics of the history at its head.

``run_evaluation`` is what ``refact eval`` calls: text space, then (unless text-only) image space,
returning one ``EvalReport`` with the rows of the results table. Under ``accelerate launch`` every
process renders its share of the images; only the main process writes the store and reports.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from engine.base_weights import base_fc2_of, base_weights_of
from engine.evaluation.config import ImageEvalConfig, TextEvalConfig
from engine.evaluation.errors import EvaluationError
from engine.evaluation.scoring import retention
from engine.evaluation.text_metrics import FeatureCache, TextMetrics, text_metrics
from engine.events import Progress, ProgressCallback

# Frozen (base-encoder) features per loaded text encoder, so the worker encodes each text once.
_FROZEN: "weakref.WeakKeyDictionary[Any, FeatureCache]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class FinalMetric:
    """A completed metric value as stored (edit_id None = the whole history)."""

    edit_id: int | None
    space: str
    name: str
    value: float
    std: float | None
    n: int


@dataclass
class EvalSummary:
    """What an evaluation wrote: its run ids and the final metric values per edit (None = history)."""

    eval_run_ids: list[int] = field(default_factory=list)
    metrics: dict[int | None, dict[str, float]] = field(default_factory=dict)
    grids: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    final: list[FinalMetric] = field(default_factory=list)

    def summary(self) -> str:
        """One line for notifications."""
        n = sum(len(v) for v in self.metrics.values())
        return f"{n} metric value(s) stored in evaluation run(s) {', '.join(map(str, self.eval_run_ids)) or '-'}"


class _StoreSink:
    """engine.evaluation.image_metrics.MetricSink writing to the workspace store.

    With ``on_progress`` and ``metric_totals`` (metric name -> items expected over all edits), the
    running rows also drive one progress bar per metric."""

    def __init__(self, ws, run_id: int, space: str, summary: EvalSummary,
                 on_progress: ProgressCallback | None = None, metric_totals: dict[str, int] | None = None):
        self.ws, self.run_id, self.space, self.summary = ws, run_id, space, summary
        self.on_progress, self.metric_totals = on_progress, metric_totals or {}
        self._scored: dict[tuple[int | None, str], int] = {}

    def metric(self, edit_id, name, value, std, n, total, final) -> None:
        from store.metrics import record_metric

        record_metric(self.ws.db, eval_run_id=self.run_id, edit_id=edit_id, space=self.space, name=name,
                      value=float(value), std=std, n=int(n), total=int(total), final=bool(final))
        if final:
            self.summary.metrics.setdefault(edit_id, {})[name] = float(value)
            self.summary.final.append(FinalMetric(edit_id, self.space, name, float(value), std, int(n)))
        if self.on_progress is not None and name in self.metric_totals and edit_id is not None:
            # final rows count every item; running rows only what this process scored so far
            self._scored[(edit_id, name)] = int(total) if final else int(n)
            done = sum(v for (_, k), v in self._scored.items() if k == name)
            self.on_progress(Progress(name, done, self.metric_totals[name], f"{value:.3f}"))

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


@dataclass(frozen=True)
class _Kept:
    """What an earlier edit still achieves at the head (value, items)."""

    efficacy: float
    n_efficacy: int
    generality: float | None
    n_generality: int


def _record_retention(sink: _StoreSink, edits: Sequence, kept: dict[int, _Kept]) -> None:
    """retention_efficacy / retention_generality on every earlier edit, ``retention`` on the head."""
    earlier, head = list(edits[:-1]), edits[-1]
    values: list[float] = []
    for k, e in enumerate(earlier, 1):
        r = kept[e.id]
        sink.metric(e.id, "retention_efficacy", r.efficacy, None, r.n_efficacy, r.n_efficacy, True)
        if r.generality is not None:
            sink.metric(e.id, "retention_generality", r.generality, None, r.n_generality, r.n_generality, True)
        values.append(r.efficacy)
        sink.metric(head.id, "retention", retention(values), None, k, len(earlier), k == len(earlier))


def _fail(run_id: int, ws, exc: BaseException) -> None:
    """Close the run as failed with the first line of the error."""
    from store.metrics import finish_eval_run

    finish_eval_run(ws.db, run_id, "failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


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
        if earlier:
            kept = {}
            for e in earlier:
                tm = _text_of(model, frozen, e, config)
                kept[e.id] = _Kept(tm.efficacy, 1, tm.generality, tm.n_positives)
            _record_retention(sink, [*earlier, edit_row], kept)
    except Exception as exc:
        _fail(run.id, ws, exc)
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


def _run_config(hist, edits, history: bool) -> dict[str, Any]:
    """What every manual eval run records about the model state it measured."""
    return {"trigger": "manual", "history_id": hist.id, "history": hist.name, "head_seq": hist.head_seq,
            "scope": "history" if history else "edit", "edit_ids": [e.id for e in edits]}


def is_main_process() -> bool:
    """False on the non-main processes of an ``accelerate launch`` (they neither write nor print)."""
    from engine.evaluation.distributed import is_main_process as main

    return main()


def run_text_eval(ws, edit_id: int | None = None, history: bool = False, on_progress: ProgressCallback | None = None,
                  config: TextEvalConfig = TextEvalConfig(), device: str = "auto") -> EvalSummary:
    """Text-space metrics of one edit (default: the head edit) or of every applied edit, at the head;
    ``history`` also stores the retention metrics. Text space takes seconds, so under accelerate only
    the main process computes it (the others return an empty summary)."""
    from engine.evaluation.scoring import EditScores, summarize
    from engine.evaluation.text_metrics import text_scores
    from refact_tui.services.state import load_history_model
    from store.metrics import finish_eval_run, start_eval_run

    hist, edits = _targets(ws, edit_id, history)
    if not is_main_process():
        return EvalSummary()
    model = load_history_model(ws, hist.id, device=device).model
    run = start_eval_run(ws.db, hist.id, hist.head_seq, "text",
                         {**_run_config(hist, edits, history), "config": config.to_dict()})
    summary = EvalSummary(eval_run_ids=[run.id])
    sink = _StoreSink(ws, run.id, "text", summary)
    try:
        frozen = FeatureCache.frozen(model, base_fc2_of(model))
        rows: list[EditScores] = []
        kept: dict[int, _Kept] = {}
        for k, e in enumerate(edits, 1):
            sim, temp = _similarity(e, config)
            rows.append(text_scores(model, frozen, e.request, similarity=sim, temperature=temp))
            tm = text_metrics(model, frozen, e.request, similarity=sim, temperature=temp)
            _record_all(sink, e.id, tm)
            kept[e.id] = _Kept(tm.efficacy, 1, tm.generality, tm.n_positives)
            if len(edits) > 1:
                for m in summarize(rows).values():
                    sink.metric(None, m.name, m.value, m.std, k, len(edits), k == len(edits))
            if on_progress is not None:
                on_progress(Progress("text-eval", k, len(edits), f"edit {e.seq}"))
        if history and len(edits) > 1:
            _record_retention(sink, edits, kept)
    except Exception as exc:
        _fail(run.id, ws, exc)
        raise
    finish_eval_run(ws.db, run.id, "done")
    return summary


def _image_run_config(config: ImageEvalConfig, hist, edits, history: bool, model, judge_label: str,
                      world: int) -> dict[str, Any]:
    from engine.evaluation.generation import resolution

    pipe = model.pipeline
    h, w = resolution(pipe, config.generation)
    return {
        **_run_config(hist, edits, history), "judge": judge_label, "seeds": config.seed_list,
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
    from refact_tui.services.state import load_history_model
    from store.events import log_event
    from store.metrics import finish_eval_run, start_eval_run

    hist, edits = _targets(ws, edit_id, history)
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
                             _image_run_config(config, hist, edits, history, model, judge.name, process_info()[1]))
        summary.eval_run_ids.append(run.id)
        sink = _StoreSink(ws, run.id, "image", summary, on_progress, _metric_totals(edits, config))
        grid_dir = Path(ws.images_dir) / f"eval-{run.id}"
    targets = [EvalTarget(e.id, e.request, f"edit {e.seq}") for e in edits]
    try:
        res = evaluate_images(model, targets, config, judge=judge, base_slots=base_weights_of(model), sink=sink,
                              on_progress=on_progress, grid_dir=grid_dir, captions=captions)
        if sink is not None and history and len(edits) > 1:
            kept = {}
            for t, e in enumerate(edits):
                eff, gen = res.per_edit[t]["efficacy"], res.per_edit[t].get("generality")
                kept[e.id] = _Kept(eff.value, eff.n, gen.value if gen else None, gen.n if gen else 0)
            _record_retention(sink, edits, kept)
    except Exception as exc:
        if run is not None:
            _fail(run.id, ws, exc)
        raise
    summary.grids = list(res.grids)
    if res.quality is not None and res.quality.fid is None and res.quality.fid_note not in summary.notes:
        summary.notes.append(res.quality.fid_note)
    if run is not None:
        for note in summary.notes:
            log_event(ws.db, "eval", f"eval run {run.id}: {note}", level="warning")
        finish_eval_run(ws.db, run.id, "done")
    return summary


# --- `refact eval`: both spaces, one report -------------------------------------------------------

# Row order of the results table; other names follow alphabetically.
_CORE = ("efficacy", "generality", "generality_75", "generality_90", "specificity", "f1", "gmean")
_ORDER = (*_CORE, "p_target", "retention", *(f"baseline_{m}" for m in _CORE), *(f"oracle_{m}" for m in _CORE),
          "clip_score_before", "clip_score", "fid")


@dataclass(frozen=True)
class EvalOptions:
    """One `refact eval` invocation: which edits, which spaces, and the settings of each."""

    edit_id: int | None = None
    history: bool = False
    text_only: bool = False
    text: TextEvalConfig = TextEvalConfig()
    image: ImageEvalConfig = ImageEvalConfig()


@dataclass(frozen=True)
class MetricLine:
    """A row of the results table: a metric's text and image value (std and n of the image value
    when there is one, else of the text value)."""

    name: str
    text: float | None
    image: float | None
    std: float | None
    n: int | None


@dataclass
class EvalReport:
    """What `refact eval` measured. ``scope_edit_id`` None: the table shows whole-history values."""

    history: str
    head_seq: int
    edit_ids: list[int]
    scope_edit_id: int | None
    main_process: bool = True
    lines: list[MetricLine] = field(default_factory=list)
    per_edit: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)  # edit -> space -> name -> value
    run_ids: dict[str, list[int]] = field(default_factory=dict)
    grids: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for notifications."""
        runs = ", ".join(f"{space} {ids[0]}" for space, ids in self.run_ids.items() if ids)
        return f"{len(self.edit_ids)} edit(s) evaluated at head {self.head_seq} (runs: {runs or '-'})"


def _lines(finals: Sequence[FinalMetric], scope: int | None, head_id: int) -> list[MetricLine]:
    """Table rows of the scope's final values (plus the head's retention for a history scope)."""
    mine = [f for f in finals if f.edit_id == scope or (f.name == "retention" and f.edit_id == head_id)]
    by_name: dict[str, dict[str, FinalMetric]] = {}
    for f in mine:
        by_name.setdefault(f.name, {})[f.space] = f
    rank = {name: i for i, name in enumerate(_ORDER)}
    lines = []
    for name in sorted(by_name, key=lambda k: (rank.get(k, len(rank)), k)):
        t, i = by_name[name].get("text"), by_name[name].get("image")
        ref = i or t
        lines.append(MetricLine(name, t.value if t else None, i.value if i else None, ref.std, ref.n))
    return lines


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


def run_evaluation(ws, options: EvalOptions = EvalOptions(),
                   on_progress: ProgressCallback | None = None) -> EvalReport:
    """Text-space metrics, then image-space ones unless ``text_only``; the report's ``lines`` are the
    scope's final values (the edit's, or the whole history's with ``history``)."""
    from engine.evaluation.distributed import eval_device
    from engine.evaluation.judge import load_judge

    hist, edits = _targets(ws, options.edit_id, options.history)
    if not options.text_only:
        _require_pipeline(ws, hist)
        options = replace(options, image=with_workspace_judge(ws, options.image))
    # A missing judge fails before any work is done or stored.
    judge = None if options.text_only else load_judge(options.image.judge, eval_device(options.image.device))
    text = run_text_eval(ws, options.edit_id, options.history, on_progress, options.text, options.image.device)
    image = None
    if not options.text_only:
        image = run_image_eval(ws, options.edit_id, options.history, options.image, on_progress, judge)
    scope = None if options.history and len(edits) > 1 else edits[-1].id
    report = EvalReport(hist.name, hist.head_seq, [e.id for e in edits], scope, main_process=is_main_process())
    for space, s in (("text", text), ("image", image)):
        if s is None:
            continue
        report.run_ids[space] = list(s.eval_run_ids)
        report.grids += s.grids
        report.notes += s.notes
        for edit_id, values in s.metrics.items():
            if edit_id is not None:
                report.per_edit.setdefault(edit_id, {})[space] = dict(values)
    finals = [*text.final, *(image.final if image is not None else [])]
    report.lines = _lines(finals, scope, edits[-1].id)
    return report
