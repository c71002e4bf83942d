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

Text space is per encoder slot (services/eval_text.py): a multi-slot model also stores each edited
slot's rows (metrics.slot = the slot name); the whole-edit rows (slot '') are the mean over the
edited slots. Image space is services/eval_image.py; shared pieces are services/eval_common.py.

``run_evaluation`` is what ``refact eval`` calls: text space, then (unless text-only) image space,
returning one ``EvalReport`` with the rows of the results table. Under ``accelerate launch`` every
process renders its share of the images; only the main process writes the store and reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from engine.evaluation.config import ImageEvalConfig, TextEvalConfig
from engine.events import ProgressCallback
from refact_tui.services.eval_common import (  # noqa: F401  (re-exported: the public evaluation API)
    EvalSummary,
    MetricValue,
    eval_targets,
    is_main_process,
)
from refact_tui.services.eval_image import (  # noqa: F401
    JUDGE_META_KEY,
    _require_pipeline,
    run_image_eval,
    with_workspace_judge,
)
from refact_tui.services.eval_text import (  # noqa: F401
    EditTextMetrics,
    SlotTextMetrics,
    frozen_features,
    measure_slots,
    record_text_metrics,
    run_text_eval,
)

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
    # the scope's text values per encoder slot (slot -> name -> value); empty for a one-slot model
    per_slot: dict[str, dict[str, float]] = field(default_factory=dict)
    # batch edits: each request's text values in batch order (the table shows their mean)
    per_request: dict[int, list[dict[str, float]]] = field(default_factory=dict)
    run_ids: dict[str, list[int]] = field(default_factory=dict)
    grids: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for notifications."""
        runs = ", ".join(f"{space} {ids[0]}" for space, ids in self.run_ids.items() if ids)
        return f"{len(self.edit_ids)} edit(s) evaluated at head {self.head_seq} (runs: {runs or '-'})"


def _lines(finals: Sequence[MetricValue], scope: int | None, head_id: int) -> list[MetricLine]:
    """Table rows of the scope's final values (plus the head's retention for a history scope)."""
    mine = [f for f in finals if not f.slot and (f.edit_id == scope or (f.name == "retention" and f.edit_id == head_id))]
    by_name: dict[str, dict[str, MetricValue]] = {}
    for f in mine:
        by_name.setdefault(f.name, {})[f.space] = f
    rank = {name: i for i, name in enumerate(_ORDER)}
    lines = []
    for name in sorted(by_name, key=lambda k: (rank.get(k, len(rank)), k)):
        t, i = by_name[name].get("text"), by_name[name].get("image")
        ref = i or t
        lines.append(MetricLine(name, t.value if t else None, i.value if i else None, ref.std, ref.n))
    return lines


def run_evaluation(ws, options: EvalOptions = EvalOptions(),
                   on_progress: ProgressCallback | None = None) -> EvalReport:
    """Text-space metrics, then image-space ones unless ``text_only``; the report's ``lines`` are the
    scope's final values (the edit's, or the whole history's with ``history``)."""
    from engine.evaluation.distributed import eval_device
    from engine.evaluation.judge import load_judge

    hist, edits = eval_targets(ws, options.edit_id, options.history)
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
    report.per_slot = {slot: dict(values) for slot, values in text.slot_metrics.get(scope, {}).items()}
    report.per_request = {edit_id: [dict(v) for v in rows] for edit_id, rows in text.request_metrics.items()}
    return report


__all__ = [
    "EditTextMetrics", "EvalOptions", "EvalReport", "EvalSummary", "MetricValue", "JUDGE_META_KEY", "MetricLine", "SlotTextMetrics",
    "eval_targets", "frozen_features", "is_main_process", "measure_slots", "record_text_metrics", "run_evaluation",
    "run_image_eval", "run_text_eval", "with_workspace_judge",
]
