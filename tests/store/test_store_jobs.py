"""The job queue: order, moves, state transitions and atomic claims."""

from __future__ import annotations

import threading

import pytest

from store import jobs
from store.db import NotFoundError, StoreError, open_db


def _enqueue(db, history, hparams, make_request, n):
    return [jobs.enqueue(db, history.id, make_request(i), hparams) for i in range(n)]


def _queued_ids(db):
    return [j.id for j in jobs.list_jobs(db, states=["queued"])]


def test_enqueue_round_trips_request_and_hparams(db, history, hparams, make_request):
    job = jobs.enqueue(db, history.id, make_request(3), hparams)
    again = jobs.get_job(db, job.id)
    assert again.request == make_request(3)
    assert again.hparams == hparams
    assert (again.state, again.attempts, again.cancel_requested) == ("queued", 0, False)
    with pytest.raises(NotFoundError, match="no history"):
        jobs.enqueue(db, 999, make_request(0), hparams)


def test_claim_order_follows_position(db, history, hparams, make_request):
    a, b, c = _enqueue(db, history, hparams, make_request, 3)
    claimed = jobs.claim_next(db, "w1")
    assert claimed.id == a.id and claimed.state == "running" and claimed.attempts == 1
    assert claimed.worker_id == "w1" and claimed.started_at is not None
    assert [jobs.claim_next(db, "w1").id, jobs.claim_next(db, "w1").id] == [b.id, c.id]
    assert jobs.claim_next(db, "w1") is None


def test_move_reorders_queued_jobs(db, history, hparams, make_request):
    a, b, c, d = (j.id for j in _enqueue(db, history, hparams, make_request, 4))
    jobs.move_job(db, d, 0)
    assert _queued_ids(db) == [d, a, b, c]
    jobs.move_job(db, d, 2)
    assert _queued_ids(db) == [a, b, d, c]
    jobs.move_job(db, a, 99)  # clamped to the end
    assert _queued_ids(db) == [b, d, c, a]
    assert jobs.claim_next(db, "w").id == b
    with pytest.raises(StoreError, match="only queued jobs can be moved"):
        jobs.move_job(db, b, 0)


def test_many_moves_into_the_same_gap_keep_a_strict_order(db, history, hparams, make_request):
    ids = [j.id for j in _enqueue(db, history, hparams, make_request, 3)]
    # Repeatedly inserting between the first two halves the gap until floats run out -> renumbering.
    expected = list(ids)
    for _ in range(60):
        mover = expected[-1]
        jobs.move_job(db, mover, 1)
        expected = [expected[0], mover] + [x for x in expected[1:] if x != mover]
        assert _queued_ids(db) == expected
    positions = [j.position for j in jobs.list_jobs(db, states=["queued"])]
    assert positions == sorted(set(positions))


def test_remove_clear_cancel_retry(db, history, hparams, make_request):
    a, b, c, d = (j.id for j in _enqueue(db, history, hparams, make_request, 4))
    assert jobs.remove_job(db, b).id == b
    assert _queued_ids(db) == [a, c, d]

    running = jobs.claim_next(db, "w")
    assert running.id == a
    with pytest.raises(StoreError, match="cancel a running job first"):
        jobs.remove_job(db, a)

    # Cancelling a running job only flags it; the worker finishes it as cancelled.
    flagged = jobs.cancel_job(db, a)
    assert flagged.state == "running" and flagged.cancel_requested
    assert jobs.is_cancel_requested(db, a)
    assert jobs.finish_job(db, a, "cancelled").state == "cancelled"

    assert jobs.cancel_job(db, c).state == "cancelled"
    assert jobs.is_cancel_requested(db, c)
    with pytest.raises(StoreError, match="only queued/running jobs can be cancelled"):
        jobs.cancel_job(db, c)

    retried = jobs.retry_job(db, c)
    assert retried.state == "queued" and retried.error is None and retried.finished_at is None
    assert _queued_ids(db) == [d, c]  # retried jobs go to the end
    with pytest.raises(StoreError, match="only failed/cancelled jobs can be retried"):
        jobs.retry_job(db, d)

    assert jobs.clear_queue(db) == 2
    assert _queued_ids(db) == []
    assert [j.state for j in jobs.list_jobs(db)] == ["cancelled"]
    with pytest.raises(NotFoundError):
        jobs.get_job(db, d)


def test_finish_failed_then_retry_increments_attempts(db, history, hparams, make_request):
    (job,) = _enqueue(db, history, hparams, make_request, 1)
    jobs.claim_next(db, "w")
    failed = jobs.finish_job(db, job.id, "failed", error="boom")
    assert (failed.state, failed.error) == ("failed", "boom")
    with pytest.raises(StoreError, match="only running jobs can be finished"):
        jobs.finish_job(db, job.id, "done")
    jobs.retry_job(db, job.id)
    assert jobs.claim_next(db, "w").attempts == 2
    with pytest.raises(StoreError, match="can only finish as"):
        jobs.finish_job(db, job.id, "queued")


def test_requeue_job_and_orphans(db, history, hparams, make_request):
    a, b, c = (j.id for j in _enqueue(db, history, hparams, make_request, 3))
    jobs.claim_next(db, "w")  # a
    back = jobs.requeue_job(db, a)
    assert back.state == "queued" and back.worker_id is None
    assert jobs.claim_next(db, "w").id == a  # kept its place at the front
    jobs.claim_next(db, "w")  # b
    jobs.cancel_job(db, b)  # cancel requested while the worker dies
    assert jobs.requeue_orphans(db) == [a]
    states = {j.id: j.state for j in jobs.list_jobs(db)}
    assert states == {a: "queued", b: "cancelled", c: "queued"}
    assert jobs.requeue_orphans(db) == []


def test_list_jobs_filters(db, history, hparams, make_request):
    _enqueue(db, history, hparams, make_request, 2)
    jobs.claim_next(db, "w")
    assert [j.state for j in jobs.list_jobs(db, history_id=history.id)] == ["running", "queued"]
    assert len(jobs.list_jobs(db, states=["running"])) == 1
    assert jobs.list_jobs(db, history_id=history.id + 1) == []
    with pytest.raises(StoreError, match="unknown job state"):
        jobs.list_jobs(db, states=["bogus"])


def test_claim_next_is_atomic_across_connections(db, db_path, history, hparams, make_request):
    n = 40
    ids = {j.id for j in _enqueue(db, history, hparams, make_request, n)}
    claimed: dict[str, list[int]] = {"w1": [], "w2": []}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def worker(name: str) -> None:
        conn = open_db(db_path)  # its own connection, as a second process would have
        try:
            start.wait()
            while (job := jobs.claim_next(conn, name)) is not None:
                claimed[name].append(job.id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(w,)) for w in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    all_claims = claimed["w1"] + claimed["w2"]
    assert len(all_claims) == n and set(all_claims) == ids  # no double claim, none lost
    rows = jobs.list_jobs(db)
    assert all(j.state == "running" and j.attempts == 1 for j in rows)
    assert {j.id: j.worker_id for j in rows} == {
        **{i: "w1" for i in claimed["w1"]}, **{i: "w2" for i in claimed["w2"]}
    }
