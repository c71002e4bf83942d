"""The worker's lease side: claiming under the fence, the heartbeat thread, stopping when the lease
is lost, and cleaning up delta files nothing refers to (split out of services/worker.py).

``LeaseKeeping`` is a mixin of ``Worker``: it uses the worker's ``config``, ``_db``, ``_fence``,
``_lease_lost``, ``_pending_delta``, ``_current_job``, ``_cancelled`` and ``_should_stop``.
"""

from __future__ import annotations

import threading
import time

from engine.events import StopCheck
from refact_tui.services.worker_types import JobFailed, WorkerNotice, WorkerSummary
from store.db import open_db
from store.jobs import claim_next, heartbeat_job, is_cancel_requested, peek_next
from store.leases import LeaseLostError, check_lease, renew_lease

LEASE_NAME = "worker"


class LeaseKeeping:
    """Claim, heartbeat, lease-loss and orphan-delta handling of a queue worker."""

    def _claim(self):
        """Load the model for the next job first (so a model that cannot load charges nothing), then
        claim it under the lease fence (LeaseLostError when the lease was taken over)."""

        nxt = peek_next(self._db)
        if nxt is None:
            return None
        if self._lease_lost.is_set():
            check_lease(self._db, self._fence)
        self._model_for(nxt.history_id)
        return claim_next(self._db, self.config.worker_id, fence=self._fence)

    def _lost(self, summary: WorkerSummary, exc: LeaseLostError, job_id: int | None) -> None:
        """This worker's lease was taken over: drop the uncommitted delta and stop, writing nothing."""

        self._drop_pending_delta()
        summary.lease_lost = str(exc)
        summary.stopped = True
        self._emit(WorkerNotice(f"stopped: {exc}"))
        if job_id is not None:
            self._emit(JobFailed(job_id, "lease lost; the worker that took over redoes this job", requeued=True))

    def running_job_ids(self) -> list[int]:
        """Jobs this worker runs now (heartbeat hook; services.batch_worker runs several at once)."""
        return [] if self._current_job is None else [self._current_job]

    def _remove_orphan_deltas(self, job_ids: list[int]) -> None:
        """Delete the delta files (and half-written temporaries) that dead workers' attempts of these
        jobs left: no edit refers to them, and holding the lease, no one else can be writing them."""

        from store.db import fetch_all

        if not job_ids or not self.config.deltas_dir.is_dir():
            return
        referenced = {r["delta_path"] for r in fetch_all(self._db, "SELECT delta_path FROM edits "
                                                                   "WHERE delta_path IS NOT NULL")}
        for job_id in job_ids:
            for path in self.config.deltas_dir.glob(f"*-job{job_id:05d}-a*"):
                rel = path.relative_to(self.config.root).as_posix() if path.is_relative_to(self.config.root) \
                    else str(path)
                if rel not in referenced and str(path) not in referenced:
                    path.unlink(missing_ok=True)

    def _drop_pending_delta(self) -> None:
        path, self._pending_delta = self._pending_delta, None
        if path is not None:
            try:
                path.unlink(missing_ok=True)
            except OSError:  # left for `refact doctor` to list
                pass

    def _heartbeat_loop(self, stop: threading.Event) -> None:
        """Renew the lease and the running job's heartbeat from a separate connection; a renewal that
        finds the lease taken over sets ``_lease_lost`` (the job stops at its next step)."""

        db = None
        fence = self._fence
        try:
            db = open_db(self.config.db_path, check=False)  # run() checked it already
            while not stop.wait(self.config.heartbeat_interval):
                try:
                    if not renew_lease(db, LEASE_NAME, fence.holder, fence.generation):
                        self._lease_lost.set()
                        return
                    for job_id in self.running_job_ids():
                        heartbeat_job(db, job_id, worker_id=fence.holder)
                except Exception:  # a busy database now and then must not kill the heartbeat
                    pass
        finally:
            if db is not None:
                db.close()

    def _stop_check(self, job_id: int) -> StopCheck:
        """Stop between steps on a worker stop, or when the job is cancelled (polled twice a second)."""

        last = [0.0]

        def check() -> bool:
            if self._should_stop() or self._lease_lost.is_set():
                return True
            t = time.monotonic()
            if t - last[0] >= 0.5:
                last[0] = t
                try:
                    self._cancelled = is_cancel_requested(self._db, job_id)
                except Exception:  # busy database: ask again at the next step
                    pass
            return self._cancelled

        return check
