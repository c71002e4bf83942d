"""Per-step optimization rows (the live loss panel) and the batched, non-blocking writer.

While a job runs its rows carry ``edit_id = NULL``; :func:`attach_steps` links them to the edit
in the same transaction that records it.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from pathlib import Path

import sqlite_utils

from engine.events import StepEvent
from store.db import StoreError, fetch_all, fetch_one, open_db, transaction
from store.records import StepRow
from store.states import JobState

_INSERT = (
    "INSERT OR REPLACE INTO steps (edit_id, job_id, attempt, slot, step, loss, nll, wd, p_target, delta_norm, "
    "elapsed) VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
DEFAULT_SLOT = "text_encoder"  # the encoder slot of every single-encoder model


def slot_rank(slot: str) -> int:
    """Position of an encoder slot in its pipeline (text_encoder 1, text_encoder_N N): the order the
    slots of an edit are optimised in, so the lowest-ranked slot of an edit's rows is its first."""
    head, _, tail = slot.rpartition("_")
    return int(tail) if head and tail.isdigit() else 1


def _real(x: float) -> float | None:
    # NaN becomes NULL in SQLite anyway; say so explicitly (StepRow reads NULL back as NaN).
    x = float(x)
    return None if math.isnan(x) else x


class StepWriter:
    """Buffers StepEvents and writes them in batches on its own thread and connection.

    ``add`` only appends to a list, so the optimization loop never waits on SQLite. A batch is
    written when ``flush_every`` rows are pending or the oldest pending row is ``flush_interval``
    seconds old. ``close`` writes the rest; it raises StoreError if rows could not be written.
    """

    def __init__(
        self, db_path: Path, job_id: int, attempt: int, flush_every: int = 20, flush_interval: float = 0.25,
        slot: str = DEFAULT_SLOT,
    ) -> None:
        self.db_path = Path(db_path)
        self.job_id = job_id
        self.attempt = attempt
        self.slot = slot  # the rows' slot when ``add`` names none
        self.flush_every = max(1, int(flush_every))
        self.flush_interval = float(flush_interval)
        self.commits = 0  # transactions written (tests check the batching with it)
        self.rows_written = 0
        self._pending: list[tuple] = []
        self._oldest: float | None = None
        self._cond = threading.Condition()
        self._flush_requested = 0
        self._flushed = 0
        self._closing = False
        self._error: BaseException | None = None
        # the worker checked the database when it opened it; this side connection only appends rows
        self._db: sqlite_utils.Database | None = open_db(self.db_path)
        self._thread = threading.Thread(target=self._run, name=f"steps-job{job_id}", daemon=True)
        self._thread.start()

    def add(self, event: StepEvent, slot: str | None = None) -> None:
        """Queue one step row of encoder slot ``slot`` (default: the writer's; never blocks on the database)."""
        self._queue(self._row(self.job_id, self.attempt, slot or self.slot, event))

    @staticmethod
    def _row(job_id: int, attempt: int, slot: str, event: StepEvent) -> tuple:
        return (job_id, attempt, slot, int(event.step), _real(event.loss), _real(event.nll), _real(event.wd),
                _real(event.p_target), _real(event.delta_norm), float(event.elapsed))

    def _queue(self, row: tuple) -> None:
        with self._cond:
            if self._closing:
                raise StoreError("this StepWriter is closed; create a new one for the next job")
            self._pending.append(row)
            if self._oldest is None:
                # The thread sleeps without a timeout while nothing is pending: start its clock.
                self._oldest = time.monotonic()
                self._cond.notify()
            elif len(self._pending) >= self.flush_every:
                self._cond.notify()

    __call__ = add  # usable directly as an engine StepCallback

    def flush(self, timeout: float = 30.0) -> None:
        """Write everything added so far and wait until it is committed."""
        with self._cond:
            self._flush_requested += 1
            target = self._flush_requested
            self._cond.notify()
            deadline = time.monotonic() + timeout
            while self._flushed < target and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreError(f"step rows of job {self.job_id} were not written within {timeout:.0f} s")
                self._cond.wait(left)
        self._raise_error()

    def close(self) -> None:
        """Write the remaining rows, stop the thread and close the connection."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify()
        self._thread.join()
        if self._db is not None:
            self._db.close()
            self._db = None
        self._raise_error()

    def __enter__(self) -> "StepWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise StoreError(
                f"could not write step rows of job {self.job_id}: {self._error}"
            ) from self._error

    def _due(self) -> bool:
        if self._closing or self._flush_requested > self._flushed:
            return True
        if len(self._pending) >= self.flush_every:
            return True
        return self._oldest is not None and time.monotonic() - self._oldest >= self.flush_interval

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due():
                    wait = None
                    if self._oldest is not None:
                        wait = max(0.0, self.flush_interval - (time.monotonic() - self._oldest))
                    self._cond.wait(wait)
                batch, self._pending, self._oldest = self._pending, [], None
                target, closing = self._flush_requested, self._closing
            if batch:
                self._write(batch)
            with self._cond:
                self._flushed = max(self._flushed, target)
                self._cond.notify_all()
                if closing and not self._pending:
                    return

    def _write(self, batch: list[tuple]) -> None:
        assert self._db is not None
        for attempt in range(3):
            try:
                with transaction(self._db):
                    self._db.conn.executemany(_INSERT, batch)
                self.commits += 1
                self.rows_written += len(batch)
                return
            except (StoreError, sqlite3.OperationalError) as exc:
                # Locked past the busy timeout: try again a little later rather than drop rows.
                if attempt == 2:
                    self._error = exc
                    return
                time.sleep(0.05)
            except Exception as exc:  # keep the thread alive; close() reports it
                self._error = exc
                return


def attach_steps(db: sqlite_utils.Database, job_id: int, attempt: int, edit_id: int) -> int:
    """Link a job attempt's step rows to the edit it produced; returns how many rows."""
    with transaction(db):
        return db.execute(
            "UPDATE steps SET edit_id = ? WHERE job_id = ? AND attempt = ?", [edit_id, job_id, attempt]
        ).rowcount


def _first_slot(db: sqlite_utils.Database, where: str, params: list) -> str | None:
    slots = [r["slot"] for r in fetch_all(db, f"SELECT DISTINCT slot FROM steps WHERE {where}", params)]
    return min(slots, key=lambda s: (slot_rank(s), s)) if slots else None


def steps_for_edit(db: sqlite_utils.Database, edit_id: int, slot: str | None = None) -> list[StepRow]:
    """The step rows of an edit's slot ``slot`` in step order (default: its first slot, the only one
    of a single-encoder edit; a batch's rows of every request)."""
    if slot is None:
        slot = _first_slot(db, "edit_id = ?", [edit_id])
    rows = fetch_all(db, "SELECT * FROM steps WHERE edit_id = ? AND slot = ? ORDER BY step, job_id", [edit_id, slot])
    return [StepRow.from_row(r) for r in rows]


def slot_steps_for_edit(db: sqlite_utils.Database, edit_id: int) -> dict[str, list[StepRow]]:
    """Every slot's step rows of an edit (slot -> rows in step order), slots in optimisation order."""
    rows = [StepRow.from_row(r) for r in fetch_all(
        db, "SELECT * FROM steps WHERE edit_id = ? ORDER BY step, job_id", [edit_id])]
    return group_by_slot(rows)


def group_by_slot(rows) -> dict[str, list]:
    """Step rows (anything with ``.slot``) grouped by slot, slots in optimisation order."""
    out: dict[str, list] = {}
    for r in rows:
        out.setdefault(r.slot, []).append(r)
    return {k: out[k] for k in sorted(out, key=lambda s: (slot_rank(s), s))}


def steps_for_job(
    db: sqlite_utils.Database, job_id: int, since_step: int = -1, attempt: int | None = None,
    slot: str | None = None,
) -> list[StepRow]:
    """Step rows of a job's slot with step > since_step (default attempt: the job's latest; default
    slot: the first slot of that attempt)."""
    if attempt is None:
        row = fetch_one(db, "SELECT attempts FROM jobs WHERE id = ?", [job_id])
        attempt = int(row["attempts"]) if row else 1
    if slot is None:
        slot = _first_slot(db, "job_id = ? AND attempt = ?", [job_id, attempt])
    rows = fetch_all(
        db,
        "SELECT * FROM steps WHERE job_id = ? AND attempt = ? AND slot = ? AND step > ? ORDER BY step",
        [job_id, attempt, slot, since_step],
    )
    return [StepRow.from_row(r) for r in rows]


def remove_stray_steps(db: sqlite_utils.Database) -> int:
    """Delete the step rows of attempts that never committed (no edit, job not running); returns how many."""
    with transaction(db):
        return db.execute(
            "DELETE FROM steps WHERE edit_id IS NULL AND job_id IN (SELECT id FROM jobs WHERE state != ?)",
            [JobState.RUNNING],
        ).rowcount
