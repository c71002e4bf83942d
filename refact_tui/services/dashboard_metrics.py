"""The Metrics screen's read-model: the latest value of each metric per space, and its series."""

from __future__ import annotations

from dataclasses import dataclass

import sqlite_utils

from refact_tui.services.dashboard_snapshot import history_row, read_snapshot
from store.db import fetch_all
from store.records import EvalRunRow, HistoryRow, MetricRow, metric_progress

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
        rows = fetch_all(
            db,
            "SELECT m.*, r.state AS run_state, r.at_seq AS run_seq, e.seq AS edit_seq "
            "FROM metrics m JOIN eval_runs r ON r.id = m.eval_run_id "
            "LEFT JOIN edits e ON e.id = m.edit_id "
            "WHERE r.history_id = ? AND m.slot = '' AND (e.id IS NULL OR e.status = 'applied') ORDER BY m.id",
            [history.id],
        )
        runs = [EvalRunRow.from_row(r) for r in fetch_all(
            db, "SELECT * FROM eval_runs WHERE history_id = ? ORDER BY id", [history.id])]
    latest: dict[tuple[str, str], MetricValue] = {}
    series: dict[tuple[str, str], dict[int, float]] = {}
    for r in rows:
        key = (r["space"], r["name"])
        m = MetricRow.from_row(r)
        latest[key] = MetricValue(m.value, m.std, m.n, m.total, m.final, r["run_state"] == "running",
                                  m.edit_id, r["run_seq"])
        if m.final:
            x = r["edit_seq"] if r["edit_seq"] is not None else r["run_seq"]
            series.setdefault(key, {})[int(x)] = m.value
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
