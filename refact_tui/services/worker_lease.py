"""The worker lease as an object the worker holds: the fence it writes under, the heartbeat thread
that renews it (and the running jobs' heartbeats), and whether another worker took it over.
Also the collection of delta files that dead workers left and no edit refers to.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Callable

from store.db import open_db
from store.jobs import heartbeat_job
from store.leases import Fence, LeaseLostError, acquire_fence, check_lease, release_lease, renew_lease
from store.reads import delta_file_refs

LEASE_NAME = "worker"


class LeaseKeeper:
    """Holds the workspace's worker lease for one worker run.

    ``acquire`` takes it (LeaseHeldError when another live worker has it), ``start`` runs the
    heartbeat on its own connection, ``check`` raises LeaseLostError once a renewal found the lease
    taken over, ``release`` stops the heartbeat and gives the lease back. ``running_ids`` says which
    jobs' heartbeats to refresh (a single job or every job of a batch).
    """

    def __init__(self, db_path: Path, worker_id: str, *, stale_after: float, interval: float,
                 running_ids: Callable[[], list[int]]) -> None:
        self.db_path, self.worker_id = Path(db_path), worker_id
        self.stale_after, self.interval = stale_after, interval
        self._running_ids = running_ids
        self.fence: Fence | None = None
        self.lost = threading.Event()  # set by the heartbeat when the lease was taken over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, db) -> Fence:
        self.fence = acquire_fence(db, LEASE_NAME, self.worker_id, os.getpid(), socket.gethostname(),
                                   stale_after=self.stale_after)
        return self.fence

    @property
    def owner(self) -> dict:
        """The keyword arguments every store write on a running job takes (worker id and fence)."""
        return {"worker_id": self.worker_id, "fence": self.fence}

    def check(self, db) -> None:
        """LeaseLostError when the heartbeat saw the lease taken over (confirmed in the database)."""
        if self.lost.is_set():
            check_lease(db, self.fence)

    def verify(self, db) -> None:
        """LeaseLostError unless this worker still holds the lease generation it claimed under (call
        inside the transaction that commits)."""
        check_lease(db, self.fence)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._beat, daemon=True, name="refact-heartbeat")
        self._thread.start()

    def release(self, db) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=5)
        release_lease(db, LEASE_NAME, self.worker_id)

    def _beat(self) -> None:
        """Renew the lease and the running jobs' heartbeats from a separate connection; a renewal that
        finds the lease taken over sets ``lost`` (the running work stops at its next step)."""
        db = None
        fence = self.fence
        try:
            db = open_db(self.db_path)
            while not self._stop.wait(self.interval):
                try:
                    if not renew_lease(db, LEASE_NAME, fence.holder, fence.generation):
                        self.lost.set()
                        return
                    for job_id in self._running_ids():
                        heartbeat_job(db, job_id, worker_id=fence.holder)
                except Exception:  # a busy database now and then must not kill the heartbeat
                    pass
        finally:
            if db is not None:
                db.close()


# every name a worker writes for a job, and its atomic-write temporary (.NAME.XXXX.tmp): single edits
# h0001-job00009-a2-xxxxxx.safetensors, batches h0001-batch-TOKEN-job00009.safetensors (first job's id)
ORPHAN_SHAPES = ("*-job{:05d}-a*", "*-batch-*-job{:05d}.safetensors*")


def remove_orphan_deltas(db, root: Path, deltas_dir: Path, job_ids: list[int]) -> list[Path]:
    """Delete the delta files (and half-written temporaries) that dead workers' attempts of these
    jobs left: no edit refers to them, and holding the lease, no one else can be writing them."""
    if not job_ids or not deltas_dir.is_dir():
        return []
    referenced = {ref.delta_path for ref in delta_file_refs(db)}
    found = {p for job_id in job_ids for shape in ORPHAN_SHAPES for p in deltas_dir.glob(shape.format(job_id))}
    removed = []
    for path in sorted(found):
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        if rel not in referenced and str(path) not in referenced:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


__all__ = ["LEASE_NAME", "LeaseKeeper", "LeaseLostError", "ORPHAN_SHAPES", "remove_orphan_deltas"]
