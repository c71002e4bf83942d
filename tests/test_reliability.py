"""Crash safety of the worker as a real process: SIGKILL mid-edit and restart until the queue is done
(every edit applied exactly once, integrity ok, weights == base + deltas), SIGINT requeues, and a second
worker is refused while the first runs."""

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


def start_worker(root):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "refact_tui", "--workspace", str(root), "run", "--device", "cpu"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def running_job_steps(db_path) -> tuple[int | None, int]:
    """(running job id, its step rows of the current attempt) read with a plain short connection."""
    con = sqlite3.connect(str(db_path), timeout=5)
    try:
        row = con.execute("SELECT id, attempts FROM jobs WHERE state = 'running'").fetchone()
        if row is None:
            return None, 0
        n = con.execute("SELECT COUNT(*) FROM steps WHERE job_id = ? AND attempt = ?", row).fetchone()[0]
        return row[0], n
    finally:
        con.close()


def wait_for_steps(proc, db_path, min_steps: int = 2, timeout: float = 120.0) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        job, n = running_job_steps(db_path)
        if job is not None and n >= min_steps:
            return job
        time.sleep(0.05)
    raise AssertionError("the worker never reached an optimization step")


def test_sigkill_mid_edit_and_restart_applies_every_edit_exactly_once(tmp_path, model_dir):
    from store.db import open_db
    from store.edits import list_edits
    from store.integrity import integrity_check
    from store.jobs import list_jobs

    root = tmp_path / "w"
    with new_workspace(root, model_dir) as ws:
        jobs = queue(ws, sample_requests(6), FAST.with_overrides(max_steps=25, prob_threshold=1.0, lr=0.05))
    db_path = root / "refact.db"
    killed = []
    for _ in range(6):
        proc = start_worker(root)
        job = wait_for_steps(proc, db_path)
        if job is None:  # it finished the queue before we could kill it
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed.append(job)
        if len(killed) == 3:
            break
    assert len(killed) == 3
    proc = start_worker(root)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "recovered interrupted job(s)" in out

    db = open_db(db_path)
    try:
        assert integrity_check(db) == []
        hist_id = int(db.execute("SELECT value FROM meta WHERE key = 'current_history_id'").fetchone()[0])
        edits = list_edits(db, hist_id)
        assert [e.seq for e in edits] == list(range(1, 7)) and all(e.status == "applied" for e in edits)
        assert sorted(e.job_id for e in edits) == [j.id for j in jobs]  # one edit per job
        final = list_jobs(db)
        assert all(j.state == "done" for j in final)
        assert all(j.attempts >= 2 for j in final if j.id in killed)
        assert db.execute("SELECT head_seq FROM histories WHERE id = ?", [hist_id]).fetchone()[0] == 6
        # no step rows of a killed attempt were attached to an edit
        for j in final:
            attached = {r[0] for r in db.execute("SELECT DISTINCT attempt FROM steps WHERE edit_id = ?", [j.edit_id])}
            assert attached == {j.attempts}
    finally:
        db.close()
    assert rebuild_hash(model_dir, [root / e.delta_path for e in edits]) == edits[-1].weights_hash


def test_sigint_requeues_and_a_second_worker_is_refused(tmp_path, model_dir):
    from refact_tui.services.workspace import Workspace
    from store.edits import list_edits
    from store.jobs import get_job

    root = tmp_path / "w"
    with new_workspace(root, model_dir) as ws:
        (job,) = queue(ws, sample_requests(1), FAST.with_overrides(max_steps=100000, prob_threshold=1.0))
    first = start_worker(root)
    try:
        assert wait_for_steps(first, root / "refact.db") == job.id
        second = start_worker(root)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 1
        assert err.strip().startswith("error: ") and str(first.pid) in err and len(err.strip().splitlines()) == 1
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err[-2000:]
    with Workspace.open(root) as ws:
        row = get_job(ws.db, job.id)
        assert (row.state, row.attempts, row.worker_id) == ("queued", 1, None)
        assert list_edits(ws.db, ws.history().id) == []


def test_a_workspace_in_a_read_only_folder_opens_for_reading(tmp_path, monkeypatch):
    """Issue 21 item 14: a workspace its writer closed (no -wal / -shm) on a read-only mount could not be
    read ("check that the folder exists and is writable"); it opens ``immutable=1`` there now."""
    import shutil
    import stat

    from typer.testing import CliRunner

    import store.db as store_db
    from refact_tui.cli.main import app
    from refact_tui.services.workspace import BaseModelInfo, create_workspace

    info = BaseModelInfo("tiny", "/models/tiny", "sd-pipeline", "clip", "e" * 64, {"num_layers": 4})
    create_workspace(tmp_path / "ws", info).close()
    ro = tmp_path / "ro"
    shutil.copytree(tmp_path / "ws", ro)
    assert not any(p.name.endswith(("-wal", "-shm")) for p in ro.iterdir())  # closed by its writer
    folders = [ro, *(p for p in ro.rglob("*") if p.is_dir())]
    for p in ro.rglob("*"):
        if p.is_file():
            p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    for d in folders:
        d.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: show SQLite the folder as a user (or a read-only mount) sees it
        monkeypatch.setattr(store_db, "folder_writable", lambda folder: False)
        real = store_db.sqlite3.connect

        def connect(target, *a, **kw):
            if kw.get("uri") and "mode=ro" in str(target) and "immutable=1" not in str(target):
                # what SQLite answers when it cannot create the -shm of a WAL database there
                raise sqlite3.OperationalError("attempt to write a readonly database")
            return real(target, *a, **kw)

        monkeypatch.setattr(store_db.sqlite3, "connect", connect)
    try:
        for command in (["history"], ["histories"], ["queue", "ls"], ["bench", "ls"]):
            r = CliRunner().invoke(app, ["--workspace", str(ro), *command])
            assert r.exit_code == 0 and "writable" not in r.output, (command, r.output)
        assert sorted(p.name for p in ro.iterdir()) == sorted(p.name for p in (tmp_path / "ws").iterdir())
        wal = ro / "refact.db-wal"  # a WAL with content: immutable would skip it, so plain mode=ro
        for d in folders:
            d.chmod(0o755)
        wal.write_bytes(b"x")
        assert store_db.read_only_query(ro / "refact.db") == "?mode=ro"
    finally:
        for d in folders:
            d.chmod(0o755)
