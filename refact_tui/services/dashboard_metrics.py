"""The Metrics screen's read-model: the latest value of each metric per space, and its series."""

from __future__ import annotations

from dataclasses import dataclass

import sqlite_utils

from refact_tui.services.dashboard_snapshot import history_row, read_snapshot
from store.metrics import list_eval_runs
from store.reads import history_run_metrics
from store.records import EvalRunRow, HistoryRow, metric_progress

# The metric panels, in display order: (stored name, label).
METRICS: tuple[tuple[str, str], ...] = (
    ("efficacy", "Efficacy"),
    ("generality", "Generality"),
    ("specificity", "Specificity"),
    ("f1", "F1"),
    ("retention", "Retention"),
    ("clip_score", "CLIP score"),
)


@dataclass(frozen=True)
class MetricValue:
    """The latest value of one metric in one space, with the progress of the run that wrote it."""

    value: float
    std: float | None
    n: int
    total: int
    final: bool
    running: bool  # its evaluation run is still going
    edit_id: int | None
    at_seq: int | None

    @property
    def progress(self) -> float:
        return metric_progress(self.n, self.total, self.final)


@dataclass(frozen=True)
class MetricPanelView:
    """One metric: text-space and image-space values side by side, and their series over edits."""

    name: str
    label: str
    text: MetricValue | None
    image: MetricValue | None
    text_series: tuple[tuple[int, float], ...]  # (edit seq, value)
    image_series: tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class MetricsView:
    history: HistoryRow | None
    panels: tuple[MetricPanelView, ...]
    running: tuple[EvalRunRow, ...]  # evaluation runs in progress
    last_failed: EvalRunRow | None  # the newest failed run, if it is newer than the newest success

    def panel(self, name: str) -> MetricPanelView:
        return next(p for p in self.panels if p.name == name)


def metrics_view(db: sqlite_utils.Database, *, history_id: int | None = None) -> MetricsView:
    """Latest value per metric and space for the history, plus a per-edit series for sparklines."""
    with read_snapshot(db):
        history = history_row(db, history_id)
        if history is None:
            empty = tuple(MetricPanelView(n, lbl, None, None, (), ()) for n, lbl in METRICS)
            return MetricsView(None, empty, (), None)
        rows = history_run_metrics(db, history.id)
        runs = list_eval_runs(db, history.id)[::-1]  # oldest first
    latest: dict[tuple[str, str], MetricValue] = {}
    series: dict[tuple[str, str], dict[int, float]] = {}
    for r in rows:
        m = r.metric
        key = (m.space, m.name)
        latest[key] = MetricValue(m.value, m.std, m.n, m.total, m.final, r.run_state == "running",
                                  m.edit_id, r.run_seq)
        if m.final:
            series.setdefault(key, {})[r.run_seq if r.edit_seq is None else r.edit_seq] = m.value
    panels = tuple(
        MetricPanelView(
            name, label, latest.get(("text", name)), latest.get(("image", name)),
            tuple(sorted(series.get(("text", name), {}).items())),
            tuple(sorted(series.get(("image", name), {}).items())),
        )
        for name, label in METRICS
    )
    running = tuple(r for r in runs if r.state == "running")
    failed = [r for r in runs if r.state == "failed"]
    done = [r for r in runs if r.state == "done"]
    last_failed = failed[-1] if failed and (not done or failed[-1].id > done[-1].id) else None
    return MetricsView(history, panels, running, last_failed)
