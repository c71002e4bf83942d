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
