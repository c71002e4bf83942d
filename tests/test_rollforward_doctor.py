"""`refact rollforward` (undo of a rollback, bit-exact), `refact doctor` (orphan deltas of uncommitted
attempts) and the TUI without a terminal."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner
from worker_helpers import FAST, REPO, queue, rebuild_hash, sample_requests, workspace_with_edits


def test_rollforward_restores_kept_edits_bit_exact(tmp_path, model_dir):
    from engine.errors import DeltaIntegrityError, EngineError
    from refact_tui.services.history import rollback, rollforward
    from refact_tui.services.runner import run_worker
    from refact_tui.services.working_model import load_history_model
    from store.edits import list_edits

    ws, _jobs, _ = workspace_with_edits(tmp_path / "w", model_dir, 4)
    with ws:
        hid = ws.history().id
        recorded = {e.seq: e.weights_hash for e in list_edits(ws.db, hid)}
        rollback(ws, 1)
        with pytest.raises(EngineError, match="rollforward 4"):
            rollback(ws, 4)
        res = rollforward(ws, 3)
        assert (res.from_seq, res.to_seq, res.restored, res.weights_hash) == (1, 3, 2, recorded[3])
        assert [e.status for e in list_edits(ws.db, hid)] == ["applied"] * 3 + ["rolled_back"]
        res = rollforward(ws)  # default: the last kept edit
        assert (res.to_seq, res.weights_hash) == (4, recorded[4])
        assert load_history_model(ws, hid, "cpu").weights_hash == recorded[4]
        paths = [ws.resolve(e.delta_path) for e in list_edits(ws.db, hid)]
        assert rebuild_hash(model_dir, paths) == recorded[4]  # base + deltas 1..4, outside the workspace code
        with pytest.raises(EngineError, match="nothing to roll forward"):
            rollforward(ws)
        # an edit made after a rollback belongs to another line: rolling forward over 3, 4 onto it is refused
        rollback(ws, 2)
        queue(ws, sample_requests(5)[4:], FAST)
        assert run_worker(ws, device="cpu", text_metrics=False).done == 1
        rollback(ws, 2)
        with pytest.raises(DeltaIntegrityError, match="another line of edits"):
            rollforward(ws, 5)
        assert ws.history().head_seq == 2
        assert rollforward(ws, 4).weights_hash == recorded[4]


def test_doctor_lists_and_cleans_orphan_deltas(tmp_path, model_dir):
    from refact_tui.cli.main import app

    root = tmp_path / "w"
    ws, _jobs, _ = workspace_with_edits(root, model_dir, 1)
    ws.close()
    orphan = root / "deltas" / "h0001-job00007-a1-abcdef.safetensors"
    orphan.write_bytes(b"half-written delta of an attempt that never committed")
    runner = CliRunner()
    r = runner.invoke(app, ["--workspace", str(root), "doctor"])
    assert r.exit_code == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "1 delta file(s) of attempts that never committed" in text and orphan.name in text
    r = runner.invoke(app, ["--workspace", str(root), "doctor", "--clean", "--json"])
    assert r.exit_code == 0 and not orphan.exists()
    assert len(list((root / "deltas").iterdir())) == 1  # the committed edit's delta is kept
    # a damaged database: doctor says what, exit 1
    import sqlite3

    con = sqlite3.connect(str(root / "refact.db"))
    con.execute("UPDATE histories SET head_seq = 7")
    con.commit()
    con.close()
    r = runner.invoke(app, ["--workspace", str(root), "doctor"])
    assert r.exit_code == 1 and "head_seq 7" in " ".join(r.stdout.split())


@pytest.mark.parametrize("args", [["tui"], []])
def test_tui_without_a_terminal_says_so_and_exits_2(args, tmp_path):
    r = subprocess.run([sys.executable, "-m", "refact_tui", "--workspace", str(tmp_path / "w"), *args],
                       cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stdout == ""  # no escape codes written into the redirected output
    (line,) = r.stderr.strip().splitlines()
    assert "the TUI needs a terminal" in line and "history" in line and "run" in line and "rollforward" in line


def test_recovery_removes_the_delta_files_a_dead_attempt_left(tmp_path, model_dir):
    from worker_helpers import new_workspace

    from refact_tui.services.runner import run_worker
    from refact_tui.services.workspace import Workspace
    from store.jobs import claim_next, set_phase

    root = tmp_path / "w"
    with new_workspace(root, model_dir) as ws:
        (job,) = queue(ws, sample_requests(1), FAST)
        claim_next(ws.db, "dead-worker")
        set_phase(ws.db, job.id, "committing", worker_id="dead-worker")
    h = 1  # the first history
    left = [root / "deltas" / f"h{h:04d}-job{job.id:05d}-a1-0a1b2c.safetensors",
            root / "deltas" / f".h{h:04d}-job{job.id:05d}-a1-3d4e5f.safetensors.x7.tmp"]
    for p in left:
        p.write_bytes(b"written before the kill")
    with Workspace.open(root) as ws:
        summary = run_worker(ws, device="cpu", text_metrics=False)
        assert summary.recovered_jobs == [job.id] and summary.done == 1
    assert not any(p.exists() for p in left)
    assert len(list((root / "deltas").iterdir())) == 1
