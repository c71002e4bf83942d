"""Lease fencing in the store: generations only grow, and a taken-over holder can neither renew,
claim, run nor finish a job (nothing is written)."""

from __future__ import annotations

import os

import pytest

from store import jobs
from store.leases import LeaseLostError, acquire_fence, check_lease, release_lease, renew_lease, this_host

HOST = this_host()


def _stale(db) -> None:
    db.execute("UPDATE leases SET heartbeat_at = heartbeat_at - 3600")


def test_generation_grows_on_every_takeover_even_after_a_release(db):
    a = acquire_fence(db, "worker", "a", os.getpid(), HOST)
    assert acquire_fence(db, "worker", "a", os.getpid(), HOST).generation == a.generation  # re-entrant
    _stale(db)
    b = acquire_fence(db, "worker", "b", os.getpid(), HOST)
    assert b.generation == a.generation + 1
    assert release_lease(db, "worker", "b")
    c = acquire_fence(db, "worker", "c", os.getpid(), HOST)
    assert c.generation == b.generation + 1


def test_a_taken_over_holder_writes_nothing(db, history, hparams, make_request):
    a = acquire_fence(db, "worker", "a", os.getpid(), HOST)
    job = jobs.enqueue(db, history.id, make_request(1), hparams)
    other = jobs.enqueue(db, history.id, make_request(2), hparams)
    claimed = jobs.claim_next(db, "a", fence=a)
    assert (claimed.id, claimed.lease_generation, claimed.phase) == (job.id, a.generation, "claimed")
    jobs.set_phase(db, job.id, "optimizing", worker_id="a", fence=a)
    _stale(db)
    b = acquire_fence(db, "worker", "b", os.getpid(), HOST)
    assert jobs.recover_orphans(db).charged == [job.id]   # B requeues A's job, charged: it was optimizing
    assert renew_lease(db, "worker", "a", a.generation) is False
    with pytest.raises(LeaseLostError, match="lost the worker lease"):
        check_lease(db, a)
    with pytest.raises(LeaseLostError):
        jobs.claim_next(db, "a", fence=a)
    jobs.claim_next(db, "b", fence=b)  # B runs it now
    for write in (lambda: jobs.finish_job(db, job.id, "done", worker_id="a", fence=a),
                  lambda: jobs.requeue_job(db, job.id, worker_id="a"),
                  lambda: jobs.set_phase(db, job.id, "committing", worker_id="a", fence=a)):
        with pytest.raises(LeaseLostError):
            write()
    row = jobs.get_job(db, job.id)
    assert (row.state, row.worker_id, row.phase, row.lease_generation) == ("running", "b", "claimed", b.generation)
    assert jobs.get_job(db, other.id).state == "queued"
    assert jobs.finish_job(db, job.id, "done", worker_id="b", fence=b).state == "done"
