"""Lease fencing with real worker processes: a worker paused (SIGSTOP) past the stale time is taken over,
and when it resumes (SIGCONT) it stops at once and commits nothing; the one that took over finishes every
job exactly once and never trips over a job the first one touched."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from worker_helpers import FAST, REPO, new_workspace, queue, rebuild_hash, sample_requests

pytestmark = pytest.mark.slow

STALE_S = 1.5


def start_worker(root):
    env = dict(os.environ, PYTHONPATH=str(REPO), REFACT_LEASE_STALE_AFTER=str(STALE_S), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "refact_tui", "--workspace", str(root), "run", "--device", "cpu"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def query(db_path, sql, params=()):
    con = sqlite3.connect(str(db_path), timeout=10)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def wait_until(cond, timeout=120.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_paused_worker_that_lost_its_lease_commits_nothing(tmp_path, model_dir):
    from store.db import open_db
    from store.edits import list_edits
    from store.integrity import integrity_check
    from store.jobs import list_jobs

    root = tmp_path / "w"
    with new_workspace(root, model_dir) as ws:
        jobs = queue(ws, sample_requests(3), FAST.with_overrides(max_steps=150, prob_threshold=1.0, lr=0.01))
    db_path = root / "refact.db"
    a = start_worker(root)
    b = None
    try:
        def a_optimizing():
            rows = query(db_path, "SELECT j.id, j.worker_id, j.lease_generation FROM jobs j WHERE j.state = 'running' "
                                  "AND (SELECT COUNT(*) FROM steps s WHERE s.job_id = j.id AND s.attempt = j.attempts) >= 5")
            return rows[0] if rows else None

        job_a, holder_a, gen_a = wait_until(a_optimizing, what="worker A to optimize")
        a.send_signal(signal.SIGSTOP)
        time.sleep(STALE_S + 1.0)
        b = start_worker(root)
        # B takes the lease over and runs a job of its own while A is still paused
        wait_until(lambda: query(db_path, "SELECT 1 FROM jobs WHERE state = 'running' AND worker_id != ?",
                                 [holder_a]), what="worker B to claim a job")
        gen_b = query(db_path, "SELECT generation FROM leases")[0][0]
        assert gen_b == gen_a + 1
        a.send_signal(signal.SIGCONT)
        a_out, a_err = a.communicate(timeout=60)
        b_out, b_err = b.communicate(timeout=300)
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait()
    assert a.returncode == 1, a_err[-2000:]
    assert "lost the worker lease" in a_err and len(a_err.strip().splitlines()) == 1
    assert b.returncode == 0, b_err[-2000:]

    db = open_db(db_path)
    try:
        assert integrity_check(db) == []
        hist_id = int(db.execute("SELECT value FROM meta WHERE key = 'current_history_id'").fetchone()[0])
        edits = list_edits(db, hist_id)
        assert [e.seq for e in edits] == [1, 2, 3] and all(e.status == "applied" for e in edits)
        assert sorted(e.job_id for e in edits) == [j.id for j in jobs]  # exactly one edit per job
        assert {e.lease_generation for e in edits} == {gen_b}  # A wrote none of them
        final = {j.id: j for j in list_jobs(db)}
        assert all(j.state == "done" for j in final.values())
        assert final[job_a].crashes == 1  # A's attempt died (lost its lease) while optimizing
        referenced = {e.delta_path for e in edits}
    finally:
        db.close()
    on_disk = {p.relative_to(root).as_posix() for p in (root / "deltas").iterdir()}
    assert on_disk == referenced  # A left no orphan delta file behind
    assert rebuild_hash(model_dir, [root / e.delta_path for e in edits]) == edits[-1].weights_hash
