"""Step rows: the batched writer, linking rows to edits, and a reader polling during writes."""

from __future__ import annotations

import math
import multiprocessing as mp
import sqlite3
import time

import pytest

from engine.events import StepEvent
from store import jobs
from store.db import StoreError, data_version, open_db
from store.steps import StepWriter, attach_steps, steps_for_edit, steps_for_job


def _event(i: int, loss: float | None = None) -> StepEvent:
    return StepEvent(step=i, loss=10.0 - i if loss is None else loss, nll=1.0 / (i + 1), wd=0.01 * i,
                     p_target=i / 100, delta_norm=0.5 * i, elapsed=0.1 * i)


def _running_job(db, history, hparams, make_request):
    jobs.enqueue(db, history.id, make_request(0), hparams)
    return jobs.claim_next(db, "w")


def test_writer_batches_and_every_row_lands_after_close(db, db_path, history, hparams, make_request):
    job = _running_job(db, history, hparams, make_request)
    # A long interval: only the size trigger and close() may write.
    writer = StepWriter(db_path, job.id, job.attempts, flush_every=20, flush_interval=60.0)
    for i in range(100):
        writer.add(_event(i))
    writer.close()
    rows = steps_for_job(db, job.id)
    assert [r.step for r in rows] == list(range(100))
    assert rows[7].loss == 3.0 and rows[7].nll == 1.0 / 8 and rows[7].delta_norm == 3.5
    assert all(r.edit_id is None and r.attempt == 1 for r in rows)
    assert writer.rows_written == 100
    assert 1 <= writer.commits <= 6  # batches of >= 20, never a commit per row


def test_flush_interval_writes_a_small_batch(db, db_path, history, hparams, make_request):
    job = _running_job(db, history, hparams, make_request)
    with StepWriter(db_path, job.id, 1, flush_every=1000, flush_interval=0.05) as writer:
        writer.add(_event(0))
        writer.add(_event(1))
        deadline = time.monotonic() + 10
        while writer.rows_written < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        # Written by the interval trigger alone, before close().
        assert [r.step for r in steps_for_job(db, job.id)] == [0, 1]
        assert writer.commits == 1


def test_flush_is_synchronous_and_nan_round_trips(db, db_path, history, hparams, make_request):
    job = _running_job(db, history, hparams, make_request)
    writer = StepWriter(db_path, job.id, 1, flush_every=1000, flush_interval=60.0)
    writer(_event(0))  # usable as a StepCallback
    writer.add(_event(1, loss=math.nan))
    writer.flush()
    rows = steps_for_job(db, job.id)
    assert len(rows) == 2 and rows[0].loss == 10.0 and math.isnan(rows[1].loss)
    assert [r.step for r in steps_for_job(db, job.id, since_step=0)] == [1]
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        writer.add(_event(2))


def test_writer_reports_rows_it_could_not_write(db, db_path, history, hparams, make_request):
    writer = StepWriter(db_path, 12345, 1, flush_every=1, flush_interval=60.0)  # no such job: FK fails
    writer.add(_event(0))
    with pytest.raises(StoreError, match="job 12345"):  # a lost batch surfaces at close()
        writer.close()


def test_attach_steps_links_one_attempt(db, db_path, history, hparams, make_request):
    job = _running_job(db, history, hparams, make_request)
    with StepWriter(db_path, job.id, 1) as w:
        for i in range(3):
            w.add(_event(i))
    jobs.finish_job(db, job.id, "failed", error="x")
    jobs.retry_job(db, job.id)
    job = jobs.claim_next(db, "w")
    with StepWriter(db_path, job.id, 2) as w:
        for i in range(5):
            w.add(_event(i))
    assert len(steps_for_job(db, job.id)) == 5  # latest attempt by default
    assert len(steps_for_job(db, job.id, attempt=1)) == 3
    edit_id = 77  # steps.edit_id has no foreign key: rows are linked before/without an edits join
    assert attach_steps(db, job.id, 2, edit_id) == 5
    assert [r.step for r in steps_for_edit(db, edit_id)] == [0, 1, 2, 3, 4]
    assert all(r.edit_id is None for r in steps_for_job(db, job.id, attempt=1))


# --- a reader process polling while a writer process inserts -------------------------------------

N_STEPS = 1500


def _writer_proc(db_path: str, job_id: int, reader_ready, out: "mp.Queue") -> None:
    try:
        reader_ready.wait(60)
        writer = StepWriter(db_path, job_id, 1, flush_every=25, flush_interval=0.02)
        for i in range(N_STEPS):
            writer.add(_event(i))
            if i % 10 == 0:
                time.sleep(0.001)  # an optimization step takes time; lets the reader interleave
        writer.close()
        out.put(("writer", writer.commits, None))
    except BaseException as exc:  # pragma: no cover - reported to the parent
        out.put(("writer", -1, repr(exc)))


def _reader_proc(db_path: str, job_id: int, reader_ready, out: "mp.Queue") -> None:
    errors: list[str] = []
    partial_views = 0  # polls that saw some but not all rows: the two really overlapped
    seen_max = -1
    monotone = True
    db = open_db(db_path)
    last_version = None
    deadline = time.monotonic() + 60
    reader_ready.set()
    try:
        while time.monotonic() < deadline:
            try:
                version = data_version(db)
                if version != last_version:
                    last_version = version
                    rows = steps_for_job(db, job_id, since_step=-1)
                    count = len(rows)
                    if rows and rows[-1].step < seen_max:
                        monotone = False
                    seen_max = max(seen_max, rows[-1].step if rows else -1)
                    if count == N_STEPS:
                        break
                    if count:
                        partial_views += 1
            except (sqlite3.Error, StoreError) as exc:
                errors.append(repr(exc))
            time.sleep(0.001)
    finally:
        db.close()
    out.put(("reader", partial_views, {"errors": errors, "seen_max": seen_max, "monotone": monotone}))


def test_reader_process_never_sees_locked_errors_while_writer_inserts(
    db, db_path, history, hparams, make_request
):
    job = _running_job(db, history, hparams, make_request)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    ready = ctx.Event()
    procs = [
        ctx.Process(target=_reader_proc, args=(str(db_path), job.id, ready, out)),
        ctx.Process(target=_writer_proc, args=(str(db_path), job.id, ready, out)),
    ]
    for p in procs:
        p.start()
    results = {}
    for _ in procs:
        who, value, extra = out.get(timeout=90)
        results[who] = (value, extra)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    commits, writer_error = results["writer"]
    assert writer_error is None
    assert 0 < commits < N_STEPS // 10  # batched
    partial_views, info = results["reader"]
    assert info["errors"] == []
    assert info["seen_max"] == N_STEPS - 1 and info["monotone"]
    assert partial_views >= 1
    assert len(steps_for_job(db, job.id)) == N_STEPS
