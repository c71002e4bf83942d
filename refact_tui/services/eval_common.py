"""What the text and image evaluations share: the store sink, the summary types, retention rows,
which edits a run measures and what it records about them (split out of services/evaluation.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from engine.evaluation.errors import EvaluationError
from engine.evaluation.scoring import retention
from engine.events import Progress, ProgressCallback
from store.records import MetricValue


@dataclass
class EvalSummary:
    """What an evaluation wrote: its run ids and the final metric values per edit (None = history).

    ``metrics`` holds the whole-edit values (a batch edit's: the mean over its requests);
    ``slot_metrics`` (edit -> slot -> name -> value) those of each encoder slot of a multi-slot model."""

    eval_run_ids: list[int] = field(default_factory=list)
    metrics: dict[int | None, dict[str, float]] = field(default_factory=dict)
    grids: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    final: list[MetricValue] = field(default_factory=list)
    slot_metrics: dict[int | None, dict[str, dict[str, float]]] = field(default_factory=dict)
    # batch edits: each request's whole-edit values, in batch order (edit -> [name -> value])
    request_metrics: dict[int, list[dict[str, float]]] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for notifications."""
        n = sum(len(v) for v in self.metrics.values())
        return f"{n} metric value(s) stored in evaluation run(s) {', '.join(map(str, self.eval_run_ids)) or '-'}"


class StoreSink:
    """engine.evaluation.image_metrics.MetricSink writing to the workspace store.

    With ``on_progress`` and ``metric_totals`` (metric name -> items expected over all edits), the
    running rows also drive one progress bar per metric."""

    def __init__(self, ws, run_id: int, space: str, summary: EvalSummary,
                 on_progress: ProgressCallback | None = None, metric_totals: dict[str, int] | None = None):
        self.ws, self.run_id, self.space, self.summary = ws, run_id, space, summary
        self.on_progress, self.metric_totals = on_progress, metric_totals or {}
        self._scored: dict[tuple[int | None, str], int] = {}

    def metric(self, edit_id, name, value, std, n, total, final, slot: str = "") -> None:
        from store.metrics import record_metric

        record_metric(self.ws.db, eval_run_id=self.run_id, edit_id=edit_id, space=self.space, name=name,
                      value=float(value), std=std, n=int(n), total=int(total), final=bool(final), slot=slot)
        if final:
            if slot:
                self.summary.slot_metrics.setdefault(edit_id, {}).setdefault(slot, {})[name] = float(value)
            else:
                self.summary.metrics.setdefault(edit_id, {})[name] = float(value)
            self.summary.final.append(MetricValue(edit_id, self.space, name, float(value), std, int(n), slot))
        if self.on_progress is not None and name in self.metric_totals and edit_id is not None and not slot:
            # final rows count every item; running rows only what this process scored so far
            self._scored[(edit_id, name)] = int(total) if final else int(n)
            done = sum(v for (_, k), v in self._scored.items() if k == name)
            self.on_progress(Progress(name, done, self.metric_totals[name], f"{value:.3f}"))

    def artifact(self, edit_id, kind, path, sha256, nbytes, meta) -> None:
        from store.artifacts import add_artifact

        owner = ("edit", edit_id) if edit_id is not None else ("eval_run", self.run_id)
        add_artifact(self.ws.db, owner[0], owner[1], kind, self.ws.relative(path), sha256=sha256, bytes=nbytes,
                     meta={**meta, "eval_run_id": self.run_id})


@dataclass(frozen=True)
class Kept:
    """What an earlier edit still achieves at the head (value, items)."""

    efficacy: float
    n_efficacy: int
    generality: float | None
    n_generality: int


def record_retention(sink: StoreSink, edits: Sequence, kept: dict[int, Kept], slot: str = "") -> None:
    """retention_efficacy / retention_generality on every earlier edit, ``retention`` on the head
    (``edits`` in seq order, the head last; ``slot`` as in StoreSink.metric)."""
    earlier, head = list(edits[:-1]), edits[-1]
    values: list[float] = []
    for k, e in enumerate(earlier, 1):
        r = kept[e.id]
        sink.metric(e.id, "retention_efficacy", r.efficacy, None, r.n_efficacy, r.n_efficacy, True, slot)
        if r.generality is not None:
            sink.metric(e.id, "retention_generality", r.generality, None, r.n_generality, r.n_generality, True,
                        slot)
        values.append(r.efficacy)
        sink.metric(head.id, "retention", retention(values), None, k, len(earlier), k == len(earlier), slot)


def fail_run(run_id: int, ws, exc: BaseException) -> None:
    """Close the run as failed with the first line of the error."""
    from store.metrics import finish_eval_run

    finish_eval_run(ws.db, run_id, "failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def eval_targets(ws, edit_id: int | None, history: bool):
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


def run_config(hist, edits, history: bool) -> dict[str, Any]:
    """What every manual eval run records about the model state it measured."""
    return {"trigger": "manual", "history_id": hist.id, "history": hist.name, "head_seq": hist.head_seq,
            "scope": "history" if history else "edit", "edit_ids": [e.id for e in edits]}


def is_main_process() -> bool:
    """False on the non-main processes of an ``accelerate launch`` (they neither write nor print)."""
    from engine.evaluation.distributed import is_main_process as main

    return main()
