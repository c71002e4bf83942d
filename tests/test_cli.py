"""The `refact` CLI through typer's CliRunner: one-line errors with exit codes, --json output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from refact_tui.cli.main import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def ws_root(tmp_path_factory, model_dir):
    root = tmp_path_factory.mktemp("cli") / "w"
    r = invoke("--workspace", root, "init", "--model", model_dir)
    assert r.exit_code == 0, r.output
    return root


def test_missing_model_is_one_red_line_and_exit_1(tmp_path):
    r = invoke("--workspace", tmp_path / "w", "init", "--model", tmp_path / "nope")
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nope" in lines[0]
    assert "Traceback" not in r.output
    assert not (tmp_path / "w" / "refact.db").exists()


def test_no_workspace_and_usage_errors(tmp_path):
    r = invoke("--workspace", tmp_path / "none", "queue", "ls")
    assert r.exit_code == 1 and "no workspace at" in r.stderr and "refact init" in r.stderr
    assert invoke("queue", "add", "--prompt", "x").exit_code == 2
    assert invoke("no-such-command").exit_code == 2


def test_malformed_import_file_is_refused_with_the_row(ws_root, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "A cat", "source": "cat", "target": "dog"}\n{"prompt": ""}\nnot json\n')
    r = invoke("--workspace", ws_root, "queue", "import", bad, "--layer", "2")
    assert r.exit_code == 1
    assert "error: " in r.stderr and "bad.jsonl" in r.stderr and "nothing was queued" in r.stderr
    r = invoke("--workspace", ws_root, "queue", "ls", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) == []


def test_import_checks_token_lengths_with_the_base_tokenizer(ws_root, tmp_path):
    long = "a " + " ".join(["very"] * 90) + " long prompt"
    f = tmp_path / "long.jsonl"
    f.write_text(json.dumps({"prompt": "A cat", "source": "cat", "target": "dog"}) + "\n"
                 + json.dumps({"prompt": long, "source": "x", "target": "y"}) + "\n")
    r = invoke("--workspace", ws_root, "queue", "import", f)
    assert r.exit_code == 1
    err = " ".join(r.stderr.split())
    assert "row 2, column 'prompt': is 101 tokens long inside the template" in err
    assert "(bare: 95), over the limit of 77" in err
    r = invoke("--workspace", ws_root, "queue", "import", f, "--skip-invalid", "--json")
    assert r.exit_code == 0 and len(json.loads(r.stdout)["added"]) == 1
    assert json.loads(invoke("--workspace", ws_root, "queue", "clear", "--json").stdout) == {"removed": 1}


def test_queue_add_ls_move_rm_json(ws_root):
    base = ["--workspace", ws_root, "queue"]
    ids = []
    for animal in ("cat", "dog", "owl"):
        r = invoke(*base, "add", "--prompt", f"A {animal}", "--source", animal, "--target", "fox", "--layer", "2",
                   "--max-steps", "5", "--json")
        assert r.exit_code == 0, r.output
        ids.append(json.loads(r.stdout)["id"])
    r = invoke(*base, "add", "--prompt", "A cat", "--source", "cat", "--target", "fox", "--layer", "7")
    assert r.exit_code == 1 and "layer 7" in r.stderr
    assert invoke(*base, "move", ids[2], 0).exit_code == 0
    assert invoke(*base, "rm", ids[1]).exit_code == 0
    jobs = json.loads(invoke(*base, "ls", "--json").stdout)
    assert [j["id"] for j in jobs] == [ids[2], ids[0]]
    assert jobs[0]["hparams"]["max_steps"] == 5 and jobs[0]["request"]["prompt"] == "A owl"
    assert json.loads(invoke(*base, "clear", "--json").stdout) == {"removed": 2}


def test_run_history_show_rollback_export_through_the_cli(tmp_path, model_dir):
    root = tmp_path / "w"
    assert invoke("--workspace", root, "init", "--model", model_dir).exit_code == 0
    from refact_tui.services.runner import STATS_SAMPLES_KEY
    from refact_tui.services.workspace import Workspace
    from store.db import set_meta

    with Workspace.open(root) as ws:
        set_meta(ws.db, STATS_SAMPLES_KEY, "40")
    for animal in ("cat", "dog"):
        invoke("--workspace", root, "queue", "add", "--prompt", f"A {animal}", "--source", f"a {animal}",
               "--target", "a fox", "--layer", "2", "--max-steps", "6")
    r = invoke("--workspace", root, "run", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "2 edit(s) applied" in r.stdout
    edits = json.loads(invoke("--workspace", root, "history", "--json").stdout)
    assert [e["seq"] for e in edits] == [1, 2] and all(e["status"] == "applied" for e in edits)
    shown = json.loads(invoke("--workspace", root, "show", edits[0]["id"], "--json").stdout)
    assert shown["curve"]["steps"] == edits[0]["steps_run"]
    # 6 steps on the tiny random encoder stay far below 0.99: applied, but never reported as a success
    assert all(e["steps_run"] == 6 and not e["early_stopped"] and e["p_target"] < 0.99 for e in edits)
    flat = " ".join(r.stdout.split())
    assert "✓" not in r.stdout and flat.count("! applied, budget used, P 0.") == 2 and "< 0.99 job" in flat
    assert "2 edit(s) applied: 0 reached its threshold, 2 used its step budget below it; 0 failed" in flat
    label = f"applied, budget used, P {edits[0]['p_target']:.2f} < 0.99"
    assert label in " ".join(invoke("--workspace", root, "show", edits[0]["id"]).stdout.split())
    table = invoke("--workspace", root, "history").stdout
    assert table.count("budget") == 2  # the status column of both rows (folded at the table's width)
    from store.db import fetch_all

    with Workspace.open(root) as ws:
        messages = [r["message"] for r in fetch_all(ws.db, "SELECT message FROM events WHERE message LIKE 'edit %'")]
    assert sum(f"edit 1 {label} (job" in m for m in messages) == 1
    r = invoke("--workspace", root, "rollback", 1, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["weights_hash"] == edits[0]["weights_hash"]
    r = invoke("--workspace", root, "export", tmp_path / "d", "--deltas-only", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["n_edits"] == 1
    r = invoke("apply-deltas", tmp_path / "d" / "manifest.json", "--model", model_dir, "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    r = invoke("--workspace", root, "fork", "--at", 0, "--name", "clean")
    assert r.exit_code == 0
    hs = json.loads(invoke("--workspace", root, "histories", "--json").stdout)
    assert [(h["history"]["name"], h["current"]) for h in hs] == [("main", False), ("clean", True)]
    r = invoke("--workspace", root, "checkout", "nope")
    assert r.exit_code == 1 and "nope" in r.stderr


@pytest.mark.skipif(shutil.which("chattr") is None, reason="needs chattr (root) or chmod (non-root)")
def test_read_only_workspace_is_one_line_error(tmp_path, model_dir):
    root = tmp_path / "w"
    assert invoke("--workspace", root, "init", "--model", model_dir).exit_code == 0
    targets = [root, *root.iterdir()]
    if os.geteuid() == 0:
        ok = subprocess.run(["chattr", "+i", *map(str, targets)], capture_output=True).returncode == 0
        if not ok:
            pytest.skip("chattr +i not permitted here")
    else:
        for p in targets:
            p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        r = invoke("--workspace", root, "queue", "add", "--prompt", "A cat", "--source", "cat", "--target", "dog",
                   "--layer", "2")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", *map(str, targets)])
        else:
            for p in targets:
                p.chmod(0o755 if p.is_dir() else 0o644)
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output


def test_bench_uses_the_workspace_judge_like_eval(tmp_path, model_dir):
    """`refact bench` without --judge takes the judge the workspace records (`init --judge`, or the
    demo's plumbing check), as `refact eval` does, instead of demanding the default ViT-bigG-14."""
    from engine.evaluation.judge import build_random_judge

    root = tmp_path / "w"
    r = invoke("--workspace", root, "init", "--model", model_dir, "--judge", "nocolon")
    assert r.exit_code == 1 and "not MODEL:CHECKPOINT" in r.stderr and not root.exists()
    judge = build_random_judge(tmp_path / "tiny-judge")
    assert invoke("--workspace", root, "init", "--model", model_dir, "--judge", judge).exit_code == 0
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "A cat", "source": "a cat", "target": "a dog",
                                "positives": [{"prompt": "A cat on a sofa", "source": "a cat on a sofa",
                                               "target": "a dog on a sofa"}]}) + "\n")
    r = invoke("--workspace", root, "bench", "run", rows, "--layer", "2", "--hp", "max_steps=2", "--seeds", "1",
               "--steps", "2", "--n-captions", "0", "--stats-samples", "20", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["config"]["options"]["judge"] == judge
