"""Crash safety of batches as real processes: SIGKILL mid-optimisation and mid-commit, then a clean
restart; every job of the batch ends applied exactly once (issue 9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from test_reliability import wait_for_steps
from worker_helpers import FAST, REPO, jobs_at, new_workspace, queue, rebuild_hash, sample_requests

pytestmark = pytest.mark.slow

# Dies (SIGKILL) inside the commit transaction, after the batch edit row and the job states are written.
KILL_IN_COMMIT = """
import os, signal, sys
import refact_tui.services.batch_worker as bw
orig = bw.record_batch_requests
def die(*a, **k):
    orig(*a, **k)
    os.kill(os.getpid(), signal.SIGKILL)
bw.record_batch_requests = die
from refact_tui.cli.main import run
sys.argv = ["refact", *sys.argv[1:]]
run()
"""


def start(root, *extra, code=None):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    head = ["-c", code] if code else ["-m", "refact_tui"]
    args = [sys.executable, *head, "--workspace", str(root), "run", "--device", "cpu", *extra]
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def check_exactly_once(root, model_dir, jobs):
    from store.db import open_db
    from store.edits import list_edits
    from store.integrity import integrity_check
    from store.jobs import list_jobs

    db = open_db(root / "refact.db")
    try:
        assert integrity_check(db) == []
        hist_id = int(db.execute("SELECT value FROM meta WHERE key = 'current_history_id'").fetchone()[0])
        edits = list_edits(db, hist_id)
        assert all(e.status == "applied" and e.kind == "batch" for e in edits)
        per_edit = [r[0] for r in db.execute("SELECT job_id FROM batch_requests ORDER BY edit_id, idx")]
        assert sorted(per_edit) == [j.id for j in jobs]  # each job in exactly one batch edit
        final = list_jobs(db)
        assert all(j.state == "done" for j in final)
        for j in final:  # only the committed attempt's step rows are attached
            attached = {r[0] for r in db.execute("SELECT DISTINCT attempt FROM steps WHERE edit_id = ? AND job_id = ?",
                                                 [j.edit_id, j.id])}
            assert attached == {j.attempts}
    finally:
        db.close()
    assert rebuild_hash(model_dir, [root / e.delta_path for e in edits]) == edits[-1].weights_hash
    return edits


def test_batch_survives_sigkill_mid_optimisation(tmp_path, model_dir):
    root = tmp_path / "w"
    with new_workspace(root, model_dir) as ws:
        # enough steps that the kill lands mid-optimisation even on an idle machine (40 took 0.3 s)
        jobs = queue(ws, sample_requests(4), FAST.with_overrides(max_steps=600, prob_threshold=1.0, lr=0.05))
    proc = start(root, "--batch", "4", "--insert", "joint")
    assert wait_for_steps(proc, root / "refact.db") is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc = start(root, "--batch", "4", "--insert", "joint")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "recovered interrupted job(s)" in out
    edits = check_exactly_once(root, model_dir, jobs)
    # the death is charged to the batch, not its jobs, and each job runs alone next (issue 21 item 11)
    assert len(edits) == 4
    assert all(j.crashes == 0 for j in jobs_at(root))


def test_batch_survives_sigkill_mid_commit(tmp_path, model_dir):
    root = tmp_path / "w"
    with new_workspace(root, model_dir) as ws:
        jobs = queue(ws, sample_requests(3))
    proc = start(root, "--batch", "3", "--insert", "joint", code=KILL_IN_COMMIT)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    from store.db import open_db

    db = open_db(root / "refact.db")
    try:  # the transaction never committed: no edit, every job still running (orphaned)
        assert db.execute("SELECT COUNT(*) FROM edits").fetchone()[0] == 0
        assert {r[0] for r in db.execute("SELECT state FROM jobs")} == {"running"}
    finally:
        db.close()
    proc = start(root, "--batch", "3", "--insert", "joint")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    edits = check_exactly_once(root, model_dir, jobs)
    assert len(edits) == 3  # after a death in its batch's commit, each job runs alone (issue 21 item 11)
    leftovers = {p.name for p in (root / "deltas").iterdir()} - {os.path.basename(e.delta_path) for e in edits}
    assert leftovers == set()  # the dead batch's orphan delta was collected (issue 21 item 12)
