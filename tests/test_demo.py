"""`refact demo`: the whole workflow offline on a fresh machine (tiny model, no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from refact_tui.cli.main import app

runner = CliRunner()


def test_demo_builds_edits_evaluates_and_leaves_a_usable_workspace(tmp_path):
    root = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--workspace", str(root), "--limit", "2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # nothing but the JSON document on stdout
    assert report["summary"]["done"] == 2 and report["evaluation"]["head_seq"] == 2
    assert {line["name"] for line in report["evaluation"]["lines"]} >= {"efficacy", "generality", "specificity", "f1"}

    history = json.loads(runner.invoke(app, ["--workspace", str(root), "history", "--json"]).stdout)
    assert [(e["seq"], e["status"]) for e in history] == [(1, "applied"), (2, "applied")]
    assert all(0.0 < e["p_target"] < 1.0 and e["steps_run"] >= 1 for e in history)

    from refact_tui.services.evaluation import JUDGE_META_KEY
    from refact_tui.services.workspace import Workspace
    from store.db import fetch_all, get_meta

    with Workspace.open(root) as ws:
        assert get_meta(ws.db, JUDGE_META_KEY).endswith("tiny-judge.safetensors")
        finals = fetch_all(ws.db, "SELECT space, name, value, n, total FROM metrics WHERE final = 1 "
                                  "AND edit_id IS NULL AND name = 'efficacy'")
        assert {r["space"] for r in finals} == {"text", "image"}
        assert all(0.0 <= r["value"] <= 1.0 and r["n"] == r["total"] > 0 for r in finals)
        grids = fetch_all(ws.db, "SELECT path FROM artifacts WHERE kind = 'grid'")
    assert len(grids) == 2 and all((root / g["path"]).is_file() for g in grids)

    shown = runner.invoke(app, ["--workspace", str(root), "show", "1"])
    assert shown.exit_code == 0 and "image/efficacy" in shown.stdout
