"""Read-model of the TUI: small frozen views built from short reads of the workspace database.

Every ``*_view`` function runs its queries inside one short read transaction (a consistent snapshot
that is released at once, so the worker's WAL checkpoints are never held up) and returns store
record dataclasses wrapped in view dataclasses. Nothing here writes, and nothing reads the wall
clock: callers pass ``now`` so that screens and snapshot tests stay deterministic.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import sqlite_utils

from store.db import fetch_all, fetch_one
from store.records import (
    ArtifactRow,
    EditRow,
    EvalRunRow,
    EventRow,
    HistoryRow,
    JobRow,
    LeaseRow,
    MetricRow,
    metric_progress,
    StepRow,
)

# The metric panels, in display order: (stored name, label).
METRICS: tuple[tuple[str, str], ...] = (
    ("efficacy", "Efficacy"),
    ("generality", "Generality"),
    ("specificity", "Specificity"),
    ("f1", "F1"),
    ("retention", "Retention"),
    ("clip_score", "CLIP score"),
)
QUEUE_STATES: tuple[str, ...] = ("running", "queued", "failed", "cancelled")
# A worker lease whose heartbeat is older than this is shown as stale.
WORKER_STALE_S = 30.0


@contextmanager
def read_snapshot(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """A short deferred read transaction: all queries inside see the same committed state."""
    conn = db.conn
    if conn.in_transaction:
        yield db
        return
    conn.execute("BEGIN")
    try:
        yield db
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


# --- shared pieces ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerInfo:
    """The worker lease as seen by a reader."""

    holder: str
    pid: int
    host: str
    heartbeat_age: float  # seconds since the last heartbeat, at ``now``
    alive: bool


def _current_history(db: sqlite_utils.Database) -> HistoryRow | None:
    row = fetch_one(
        db,
        "SELECT h.* FROM histories h JOIN meta m ON m.key = 'current_history_id' "
        "AND CAST(m.value AS INTEGER) = h.id",
    )
    if row is None:
        row = fetch_one(db, "SELECT * FROM histories ORDER BY id LIMIT 1")
    return HistoryRow.from_row(row) if row else None


def _history(db: sqlite_utils.Database, history_id: int | None) -> HistoryRow | None:
    if history_id is None:
        return _current_history(db)
    row = fetch_one(db, "SELECT * FROM histories WHERE id = ?", [history_id])
    return HistoryRow.from_row(row) if row else None


def _worker(db: sqlite_utils.Database, now: float) -> WorkerInfo | None:
    row = fetch_one(db, "SELECT * FROM leases WHERE name = 'worker'")
    if row is None:
        return None
    lease = LeaseRow.from_row(row)
    age = max(0.0, now - lease.heartbeat_at)
    return WorkerInfo(lease.holder, lease.pid, lease.host, age, age <= WORKER_STALE_S)


def _events(db: sqlite_utils.Database, limit: int, since_id: int = 0) -> tuple[EventRow, ...]:
    rows = fetch_all(
        db, "SELECT * FROM events WHERE id > ? ORDER BY id DESC LIMIT ?", [since_id, limit]
    )
    return tuple(EventRow.from_row(r) for r in reversed(rows))


# --- queue -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueView:
    """Jobs still in play (running, queued, failed, cancelled) in queue order."""

    history: HistoryRow | None
    jobs: tuple[JobRow, ...]
    counts: dict[str, int] = field(default_factory=dict)  # per state, all jobs of the history
    worker: WorkerInfo | None = None

    def job(self, job_id: int) -> JobRow | None:
        return next((j for j in self.jobs if j.id == job_id), None)


def queue_view(db: sqlite_utils.Database, *, now: float, history_id: int | None = None,
               states: Sequence[str] = QUEUE_STATES) -> QueueView:
    """The queue of the given (default: current) history; running first, then by position."""
    with read_snapshot(db):
        history = _history(db, history_id)
        if history is None:
            return QueueView(None, (), {}, _worker(db, now))
        marks = ",".join("?" for _ in states)
        rows = fetch_all(
            db,
            f"SELECT * FROM jobs WHERE history_id = ? AND kind = 'edit' AND state IN ({marks}) "
            "ORDER BY CASE state WHEN 'running' THEN 0 ELSE 1 END, position, id",
            [history.id, *states],
        )
        counts = {
            r["state"]: r["n"]
            for r in fetch_all(
                db, "SELECT state, COUNT(*) AS n FROM jobs WHERE history_id = ? GROUP BY state",
                [history.id],
            )
        }
        return QueueView(history, tuple(JobRow.from_row(r) for r in rows), counts, _worker(db, now))


# --- live ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveView:
    """The edit being optimized now (or the last one that ran) and its steps since ``since_step``.

    ``reset`` is True when the job or attempt differs from the one the caller holds: ``steps`` then
    holds every step of the attempt, not only the new ones.
    """

    history: HistoryRow | None
    job: JobRow | None
    attempt: int
    running: bool
    reset: bool
    steps: tuple[StepRow, ...]
    last: StepRow | None
    threshold: float | None
    max_steps: int
    opt_elapsed: float | None  # optimization seconds, from the step rows
    wall_elapsed: float | None  # since the job started (at ``now`` while it runs)
    eta: float | None  # upper bound: the remaining steps at the mean step time so far
    events: tuple[EventRow, ...]
    worker: WorkerInfo | None


def _live_job(db: sqlite_utils.Database, history_id: int | None, job_id: int | None) -> JobRow | None:
    if job_id is not None:
        row = fetch_one(db, "SELECT * FROM jobs WHERE id = ?", [job_id])
        return JobRow.from_row(row) if row else None
    where = "kind = 'edit'" + (" AND history_id = ?" if history_id is not None else "")
    params: list[Any] = [history_id] if history_id is not None else []
    row = fetch_one(db, f"SELECT * FROM jobs WHERE {where} AND state = 'running' "
                        "ORDER BY started_at DESC, id DESC LIMIT 1", params)
    if row is None:
        row = fetch_one(db, f"SELECT * FROM jobs WHERE {where} AND state IN ('done', 'failed', 'cancelled') "
                            "AND attempts > 0 ORDER BY finished_at DESC, id DESC LIMIT 1", params)
    return JobRow.from_row(row) if row else None


def live_view(db: sqlite_utils.Database, *, now: float, since_step: int = -1,
              known_job: int | None = None, known_attempt: int | None = None,
              job_id: int | None = None, event_limit: int = 12) -> LiveView:
    """The running job (else the latest finished one) with its step rows after ``since_step``.

    Pass the job and attempt whose steps the caller already holds as ``known_job`` /
    ``known_attempt``; when they no longer match, every step of the current attempt is returned.
    """
    with read_snapshot(db):
        history = _current_history(db)
        job = _live_job(db, history.id if history else None, job_id)
        events = _events(db, event_limit)
        worker = _worker(db, now)
        if job is None:
            return LiveView(history, None, 0, False, known_job is not None, (), None, None, 0,
                            None, None, None, events, worker)
        attempt = max(job.attempts, 1)
        reset = (job.id, attempt) != (known_job, known_attempt)
        since = -1 if reset else since_step
        rows = fetch_all(
            db, "SELECT * FROM steps WHERE job_id = ? AND attempt = ? AND step > ? ORDER BY step",
            [job.id, attempt, since],
        )
        steps = tuple(StepRow.from_row(r) for r in rows)
        last = steps[-1] if steps else None
        if last is None and not reset:
            row = fetch_one(db, "SELECT * FROM steps WHERE job_id = ? AND attempt = ? "
                                "ORDER BY step DESC LIMIT 1", [job.id, attempt])
            last = StepRow.from_row(row) if row else None
    running = job.state == "running"
    hp = job.hparams
    eta = None
    if running and last is not None:
        per_step = last.elapsed / (last.step + 1)
        eta = max(0, hp.max_steps - 1 - last.step) * per_step
    if job.started_at is None:
        wall = None
    elif running:
        wall = max(0.0, now - job.started_at)
    else:
        wall = (job.finished_at or job.started_at) - job.started_at
    return LiveView(
        history=history, job=job, attempt=attempt, running=running, reset=reset, steps=steps,
        last=last, threshold=hp.prob_threshold, max_steps=hp.max_steps,
        opt_elapsed=last.elapsed if last else None, wall_elapsed=wall, eta=eta, events=events,
        worker=worker,
    )


# --- metrics ---------------------------------------------------------------------------------------


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
        history = _history(db, history_id)
        if history is None:
            empty = tuple(MetricPanelView(n, lbl, None, None, (), ()) for n, lbl in METRICS)
            return MetricsView(None, empty, (), None)
        rows = fetch_all(
            db,
            "SELECT m.*, r.state AS run_state, r.at_seq AS run_seq, e.seq AS edit_seq "
            "FROM metrics m JOIN eval_runs r ON r.id = m.eval_run_id "
            "LEFT JOIN edits e ON e.id = m.edit_id "
            "WHERE r.history_id = ? AND (e.id IS NULL OR e.status = 'applied') ORDER BY m.id",
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


# --- history ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryView:
    """The ordered edit log of a history (rolled-back and failed edits included)."""

    history: HistoryRow | None
    histories: tuple[HistoryRow, ...]
    edits: tuple[EditRow, ...]
    efficacy: dict[int, float] = field(default_factory=dict)  # edit id -> latest text efficacy

    def edit(self, edit_id: int) -> EditRow | None:
        return next((e for e in self.edits if e.id == edit_id), None)


def history_view(db: sqlite_utils.Database, *, history_id: int | None = None) -> HistoryView:
    """Every edit of the history in seq order, with the key figure of each."""
    with read_snapshot(db):
        history = _history(db, history_id)
        histories = tuple(HistoryRow.from_row(r) for r in fetch_all(db, "SELECT * FROM histories ORDER BY id"))
        if history is None:
            return HistoryView(None, histories, ())
        edits = tuple(EditRow.from_row(r) for r in fetch_all(
            db, "SELECT * FROM edits WHERE history_id = ? ORDER BY seq", [history.id]))
        eff = fetch_all(
            db,
            "SELECT m.edit_id, m.value FROM latest_metrics m JOIN edits e ON e.id = m.edit_id "
            "WHERE e.history_id = ? AND m.space = 'text' AND m.name = 'efficacy'",
            [history.id],
        )
    return HistoryView(history, histories, edits, {r["edit_id"]: r["value"] for r in eff})


@dataclass(frozen=True)
class EditDetailView:
    """Everything the detail pane shows about one edit."""

    edit: EditRow
    history: HistoryRow | None
    steps: tuple[StepRow, ...]
    metrics: tuple[MetricRow, ...]  # latest per (space, name)
    artifacts: tuple[ArtifactRow, ...]
    grid_path: Path | None  # absolute path of the before/after grid PNG, if one was recorded

    @property
    def grid_relpath(self) -> str | None:
        art = next((a for a in reversed(self.artifacts) if a.kind == "grid"), None)
        return art.path if art else None


def edit_detail_view(db: sqlite_utils.Database, edit_id: int, *, root: Path) -> EditDetailView | None:
    """Detail of one edit; ``root`` resolves artifact paths (stored relative to the workspace)."""
    with read_snapshot(db):
        row = fetch_one(db, "SELECT * FROM edits WHERE id = ?", [edit_id])
        if row is None:
            return None
        edit = EditRow.from_row(row)
        history = _history(db, edit.history_id)
        steps = fetch_all(db, "SELECT * FROM steps WHERE edit_id = ? ORDER BY attempt, step", [edit_id])
        metrics = fetch_all(db, "SELECT * FROM latest_metrics WHERE edit_id = ? ORDER BY space, name", [edit_id])
        arts = fetch_all(
            db, "SELECT * FROM artifacts WHERE owner_kind = 'edit' AND owner_id = ? ORDER BY id", [edit_id])
    artifacts = tuple(ArtifactRow.from_row(a) for a in arts)
    grid = next((a for a in reversed(artifacts) if a.kind == "grid"), None)
    grid_path = None
    if grid is not None:
        p = Path(grid.path)
        grid_path = p if p.is_absolute() else Path(root) / p
    return EditDetailView(
        edit=edit, history=history, steps=tuple(StepRow.from_row(s) for s in steps),
        metrics=tuple(MetricRow.from_row(m) for m in metrics), artifacts=artifacts, grid_path=grid_path,
    )


def recent_events(db: sqlite_utils.Database, *, limit: int = 50, since_id: int = 0) -> tuple[EventRow, ...]:
    """The newest events after ``since_id`` (oldest first)."""
    with read_snapshot(db):
        return _events(db, limit, since_id)
