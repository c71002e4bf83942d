"""The read queries behind the views (dashboard, batches), `refact doctor` and the histories list.

Each returns row dataclasses, never dicts, and runs inside the caller's ``read_snapshot`` when the
caller needs several reads to agree. Repository modules (``store.jobs``, ``store.edits`` ...) keep the
reads that belong to one table's life cycle; what a screen combines lives here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import sqlite_utils

from store.db import fetch_all, fetch_one
from store.records import EditRow, HistoryRow, JobRow, MetricRow, StepRow
from store.states import EditStatus, JobKind, JobState
from store.steps import slot_rank


def current_or_first_history(db: sqlite_utils.Database) -> HistoryRow | None:
    """The current history (the first one when none is marked current), or None in an empty store."""
    row = fetch_one(
        db,
        "SELECT h.* FROM histories h JOIN meta m ON m.key = 'current_history_id' "
        "AND CAST(m.value AS INTEGER) = h.id",
    )
    if row is None:
        row = fetch_one(db, "SELECT * FROM histories ORDER BY id LIMIT 1")
    return HistoryRow.from_row(row) if row else None


def find_history(db: sqlite_utils.Database, history_id: int) -> HistoryRow | None:
    """History ``history_id``, or None when it does not exist."""
    row = fetch_one(db, "SELECT * FROM histories WHERE id = ?", [history_id])
    return HistoryRow.from_row(row) if row else None


def find_edit(db: sqlite_utils.Database, edit_id: int) -> EditRow | None:
    """Edit ``edit_id``, or None when it does not exist."""
    row = fetch_one(db, "SELECT * FROM edits WHERE id = ?", [edit_id])
    return EditRow.from_row(row) if row else None


def find_job(db: sqlite_utils.Database, job_id: int) -> JobRow | None:
    """Job ``job_id``, or None when it does not exist."""
    row = fetch_one(db, "SELECT * FROM jobs WHERE id = ?", [job_id])
    return JobRow.from_row(row) if row else None


# ---------------------------------------------------------------- live: the job being optimised


def live_job(db: sqlite_utils.Database, history_id: int | None) -> JobRow | None:
    """The running edit job (of ``history_id`` when given), else the one that finished last."""
    where = f"kind = '{JobKind.EDIT}'" + (" AND history_id = ?" if history_id is not None else "")
    params = [history_id] if history_id is not None else []
    row = fetch_one(db, f"SELECT * FROM jobs WHERE {where} AND state = '{JobState.RUNNING}' "
                        "ORDER BY started_at DESC, id DESC LIMIT 1", params)
    if row is None:
        row = fetch_one(db, f"SELECT * FROM jobs WHERE {where} AND state IN "
                            f"('{JobState.DONE}', '{JobState.FAILED}', '{JobState.CANCELLED}') "
                            "AND attempts > 0 ORDER BY finished_at DESC, id DESC LIMIT 1", params)
    return JobRow.from_row(row) if row else None


def slot_lasts(db: sqlite_utils.Database, job_id: int, attempt: int) -> tuple[StepRow, ...]:
    """Each slot's latest step row of a job attempt, in slot order."""
    rows = fetch_all(db, "SELECT s.* FROM steps s JOIN (SELECT slot, MAX(step) AS step FROM steps "
                         "WHERE job_id = ? AND attempt = ? GROUP BY slot) m ON s.slot = m.slot AND s.step = m.step "
                         "WHERE s.job_id = ? AND s.attempt = ?", [job_id, attempt, job_id, attempt])
    return tuple(sorted((StepRow.from_row(r) for r in rows), key=lambda r: (slot_rank(r.slot), r.slot)))


# ---------------------------------------------------------------- queue


def queue_jobs(db: sqlite_utils.Database, history_id: int, states: Sequence[str]) -> tuple[JobRow, ...]:
    """A history's edit jobs in ``states``: the running ones first, then in queue order."""
    marks = ",".join("?" for _ in states)
    rows = fetch_all(
        db,
        f"SELECT * FROM jobs WHERE history_id = ? AND kind = '{JobKind.EDIT}' AND state IN ({marks}) "
        f"ORDER BY CASE state WHEN '{JobState.RUNNING}' THEN 0 ELSE 1 END, position, id",
        [history_id, *states],
    )
    return tuple(JobRow.from_row(r) for r in rows)


def job_state_counts(db: sqlite_utils.Database, history_id: int) -> dict[JobState, int]:
    """How many jobs of a history are in each state (states without jobs left out)."""
    rows = fetch_all(db, "SELECT state, COUNT(*) AS n FROM jobs WHERE history_id = ? GROUP BY state", [history_id])
    return {JobState(r["state"]): int(r["n"]) for r in rows}


@dataclass(frozen=True)
class HistoryCounts:
    """A history's edits per status and its queued jobs (the histories list)."""

    edits: dict[EditStatus, int]
    queued: int


def history_counts(db: sqlite_utils.Database) -> dict[int, HistoryCounts]:
    """history id -> its counts, for every history that has an edit or a queued job."""
    edits: dict[int, dict[EditStatus, int]] = {}
    for r in fetch_all(db, "SELECT history_id, status, COUNT(*) AS n FROM edits GROUP BY history_id, status"):
        edits.setdefault(int(r["history_id"]), {})[EditStatus(r["status"])] = int(r["n"])
    queued = {int(r["history_id"]): int(r["n"]) for r in fetch_all(
        db, f"SELECT history_id, COUNT(*) AS n FROM jobs WHERE state = '{JobState.QUEUED}' GROUP BY history_id")}
    return {h: HistoryCounts(edits.get(h, {}), queued.get(h, 0)) for h in sorted(set(edits) | set(queued))}


# ---------------------------------------------------------------- history and metrics


def history_edits(db: sqlite_utils.Database, history_id: int) -> tuple[EditRow, ...]:
    """Every edit of a history (rolled-back and failed included) in seq order."""
    return tuple(EditRow.from_row(r) for r in fetch_all(
        db, "SELECT * FROM edits WHERE history_id = ? ORDER BY seq", [history_id]))


def latest_text_efficacy(db: sqlite_utils.Database, history_id: int) -> dict[int, float]:
    """edit id -> the newest whole-edit text efficacy of each edit of a history that has one."""
    rows = fetch_all(
        db,
        "SELECT m.edit_id, m.value FROM latest_metrics m JOIN edits e ON e.id = m.edit_id "
        "WHERE e.history_id = ? AND m.space = 'text' AND m.name = 'efficacy' AND m.slot = ''",
        [history_id],
    )
    return {int(r["edit_id"]): float(r["value"]) for r in rows}


@dataclass(frozen=True)
class RunMetric:
    """A whole-edit metric row with the evaluation run that wrote it and where it sits in the history."""

    metric: MetricRow
    run_state: str
    run_seq: int  # the history head the run measured
    edit_seq: int | None  # the seq of the edit it measures (None: the whole history)


def history_run_metrics(db: sqlite_utils.Database, history_id: int) -> tuple[RunMetric, ...]:
    """Every whole-edit metric row the history's evaluation runs wrote for applied edits (or for the
    whole history), oldest first."""
    rows = fetch_all(
        db,
        "SELECT m.*, r.state AS run_state, r.at_seq AS run_seq, e.seq AS edit_seq "
        "FROM metrics m JOIN eval_runs r ON r.id = m.eval_run_id "
        "LEFT JOIN edits e ON e.id = m.edit_id "
        f"WHERE r.history_id = ? AND m.slot = '' AND (e.id IS NULL OR e.status = '{EditStatus.APPLIED}') ORDER BY m.id",
        [history_id],
    )
    return tuple(RunMetric(MetricRow.from_row(r), r["run_state"], int(r["run_seq"]),
                           None if r["edit_seq"] is None else int(r["edit_seq"])) for r in rows)


# ---------------------------------------------------------------- batches


def batch_jobs(db: sqlite_utils.Database, token: str) -> tuple[JobRow, ...]:
    """The jobs one batch run claimed together, in queue order."""
    return tuple(JobRow.from_row(r) for r in fetch_all(
        db, "SELECT * FROM jobs WHERE batch_token = ? ORDER BY position, id", [token]))


def last_step(db: sqlite_utils.Database, job_id: int, attempt: int) -> StepRow | None:
    """The newest step row of a job attempt (any slot), or None before its first step."""
    row = fetch_one(db, "SELECT * FROM steps WHERE job_id = ? AND attempt = ? ORDER BY step DESC LIMIT 1",
                    [job_id, attempt])
    return StepRow.from_row(row) if row else None


def mean_loss_curve(db: sqlite_utils.Database, attempts: Sequence[tuple[int, int]]) -> tuple[tuple[int, float], ...]:
    """(step, mean loss) over the (job id, attempt) pairs' step rows, finite losses only."""
    if not attempts:
        return ()
    cond = " OR ".join("(job_id = ? AND attempt = ?)" for _ in attempts)
    params = [x for pair in attempts for x in pair]
    rows = fetch_all(db, f"SELECT step, AVG(loss) AS loss FROM steps WHERE ({cond}) AND loss IS NOT NULL "
                         "GROUP BY step ORDER BY step", params)
    return tuple((int(r["step"]), float(r["loss"])) for r in rows)


def edit_mean_loss_curve(db: sqlite_utils.Database, edit_id: int) -> tuple[tuple[int, float], ...]:
    """(step, mean loss) over every step row an edit kept (a batch: over its requests)."""
    rows = fetch_all(db, "SELECT step, AVG(loss) AS loss FROM steps WHERE edit_id = ? AND loss IS NOT NULL "
                         "GROUP BY step ORDER BY step", [edit_id])
    return tuple((int(r["step"]), float(r["loss"])) for r in rows)


# ---------------------------------------------------------------- doctor


@dataclass(frozen=True)
class DeltaFileRef:
    """An edit's reference to its delta file."""

    edit_id: int
    history_id: int
    seq: int
    status: EditStatus
    delta_path: str
    delta_sha256: str | None


def delta_file_refs(db: sqlite_utils.Database) -> tuple[DeltaFileRef, ...]:
    """Every edit that names a delta file, by edit id."""
    rows = fetch_all(db, "SELECT id, history_id, seq, status, delta_path, delta_sha256 FROM edits "
                         "WHERE delta_path IS NOT NULL ORDER BY id")
    return tuple(DeltaFileRef(int(r["id"]), int(r["history_id"]), int(r["seq"]), EditStatus(r["status"]),
                              r["delta_path"], r["delta_sha256"]) for r in rows)


def stray_step_count(db: sqlite_utils.Database) -> int:
    """Step rows of attempts that never committed (no edit, and their job is not running)."""
    row = fetch_one(db, "SELECT COUNT(*) AS n FROM steps s JOIN jobs j ON j.id = s.job_id "
                        f"WHERE s.edit_id IS NULL AND j.state != '{JobState.RUNNING}'")
    return int(row["n"]) if row else 0


__all__ = [
    "DeltaFileRef", "HistoryCounts", "RunMetric", "batch_jobs", "current_or_first_history", "delta_file_refs",
    "edit_mean_loss_curve", "find_edit", "find_history", "find_job", "history_counts", "history_edits",
    "history_run_metrics", "job_state_counts", "last_step", "latest_text_efficacy", "live_job", "mean_loss_curve",
    "queue_jobs", "slot_lasts", "stray_step_count",
]
