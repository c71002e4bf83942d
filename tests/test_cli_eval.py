"""`refact eval` end to end through CliRunner on a tiny 3-edit workspace: text space with retention,
image space with a tiny random open_clip judge, stored rows, grids, progress bars, one-line errors."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import statistics
from dataclasses import replace
from pathlib import Path

import pytest
from fixtures_models import tiny_pipeline_dir
from typer.testing import CliRunner
from worker_helpers import new_workspace, queue, sample_requests

from refact_tui.cli.main import app

runner = CliRunner()
SEEDS, SIZE = 2, 16


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _write_tiny_judge(folder: Path) -> str:
    """The evaluation tests' tiny random open_clip judge (config JSON + checkpoint) -> --judge spec."""
    path = Path(__file__).with_name("evaluation") / "conftest.py"
    spec = importlib.util.spec_from_file_location("_tiny_judge_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_tiny_judge(folder)


@pytest.fixture(scope="module")
def ws_root(tmp_path_factory):
    """Three applied edits (2 positive probes, 1 negative each) at layer 2 of the tiny pipeline."""
    from refact_tui.services.runner import run_worker

    root = tmp_path_factory.mktemp("cli_eval") / "w"
    ws = new_workspace(root, tiny_pipeline_dir(tmp_path_factory))
    with ws:
        queue(ws, [replace(r, positives=r.positives[:2], negatives=r.negatives[:1]) for r in sample_requests(3)])
        assert run_worker(ws, device="cpu").done == 3
    return root


@pytest.fixture(scope="module")
def judge_spec(tmp_path_factory) -> str:
    return _write_tiny_judge(tmp_path_factory.mktemp("judge"))


def _edit_ids(root) -> list[int]:
    return [e["id"] for e in json.loads(invoke("--workspace", root, "history", "--json").stdout)]


def test_text_only_history_stores_values_at_the_head_and_retention_that_show_lists(ws_root):
    from engine.base_weights import base_fc2_of
    from engine.evaluation.text_metrics import FeatureCache, text_metrics
    from refact_tui.services.working_model import load_history_model
    from refact_tui.services.workspace import Workspace
    from store.edits import get_edit
    from store.metrics import get_eval_run, metrics_for_run

    ids = _edit_ids(ws_root)
    r = invoke("--workspace", ws_root, "eval", "--history", "--text-only", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert (out["head_seq"], out["edit_ids"], out["scope_edit_id"]) == (3, ids, None)
    assert "image" not in out["run_ids"]
    run_id = out["run_ids"]["text"][0]
    with Workspace.open(ws_root) as ws:
        run = get_eval_run(ws.db, run_id)
        assert run.state == "done" and run.at_seq == 3
        assert (run.config["scope"], run.config["head_seq"], run.config["edit_ids"]) == ("history", 3, ids)
        finals = {(m.edit_id, m.name): m for m in metrics_for_run(ws.db, run_id) if m.final}
        # per-edit values really are measured with the head weights (base + all 3 deltas)
        model = load_history_model(ws, device="cpu").model
        frozen = FeatureCache.frozen(model, base_fc2_of(model))
        for eid in ids:
            e = get_edit(ws.db, eid)
            tm = text_metrics(model, frozen, e.request, similarity=e.hparams.similarity,
                              temperature=e.hparams.temperature)
            assert finals[(eid, "p_target")].value == pytest.approx(tm.p_target, abs=1e-6)
            assert finals[(eid, "efficacy")].value == tm.efficacy
            assert finals[(eid, "generality")].n == finals[(eid, "generality")].total
    for m in finals.values():
        assert m.n == m.total and 0.0 <= m.value <= 1.0
    earlier = [finals[(eid, "retention_efficacy")].value for eid in ids[:2]]
    assert earlier == [finals[(eid, "efficacy")].value for eid in ids[:2]]
    assert finals[(ids[0], "retention_generality")].value == finals[(ids[0], "generality")].value
    assert finals[(ids[0], "retention_generality")].n == 2
    assert (ids[2], "retention_efficacy") not in finals  # the head edit gets `retention` instead
    assert finals[(ids[2], "retention")].value == pytest.approx(statistics.mean(earlier), abs=1e-12)
    assert (finals[(ids[2], "retention")].n, finals[(ids[2], "retention")].total) == (2, 2)
    # the whole-history rows aggregate the three edits; the table shows them plus the head's retention
    per_edit_eff = [finals[(eid, "efficacy")].value for eid in ids]
    assert finals[(None, "efficacy")].value == pytest.approx(statistics.mean(per_edit_eff), abs=1e-12)
    lines = {line["name"]: line for line in out["lines"]}
    assert lines["efficacy"]["text"] == finals[(None, "efficacy")].value and lines["efficacy"]["image"] is None
    assert lines["retention"]["text"] == finals[(ids[2], "retention")].value
    assert out["per_edit"][str(ids[0])]["text"]["retention_efficacy"] == earlier[0]

    shown = invoke("--workspace", ws_root, "show", ids[0])
    assert shown.exit_code == 0, shown.output
    assert f"text/retention_efficacy = {earlier[0]:.4g} (1/1)" in shown.stdout
    assert "text/retention_generality" in shown.stdout
    head = json.loads(invoke("--workspace", ws_root, "show", ids[2], "--json").stdout)
    got = {m["name"]: m for m in head["metrics"] if m["space"] == "text"}
    assert got["retention"]["value"] == finals[(ids[2], "retention")].value
    assert got["retention"]["eval_run_id"] == run_id


def test_image_eval_of_the_head_edit_stores_metrics_run_config_and_grid(ws_root, judge_spec, monkeypatch):
    from PIL import Image

    from engine.evaluation.grids import LABEL_W
    from refact_tui.cli import eval as eval_cli
    from refact_tui.services.workspace import Workspace
    from store.artifacts import list_artifacts
    from store.metrics import list_eval_runs, metrics_for_run

    events = []
    real_printer = eval_cli.progress_printer

    def recording_printer(disable):
        progress, on_progress = real_printer(disable)

        def record(p):
            events.append(p)
            on_progress(p)

        recording_printer.progress = progress
        return progress, record

    monkeypatch.setattr(eval_cli, "progress_printer", recording_printer)
    head = _edit_ids(ws_root)[-1]
    r = invoke("--workspace", ws_root, "eval", "--seeds", SEEDS, "--steps", 1, "--size", SIZE, "--judge", judge_spec)
    assert r.exit_code == 0, r.output
    assert f"edit {head} at head 3" in r.stdout and "baseline_efficacy" in r.stdout

    with Workspace.open(ws_root) as ws:
        image_run = next(run for run in list_eval_runs(ws.db) if run.space == "image")
        text_run = next(run for run in list_eval_runs(ws.db) if run.space == "text")
        rows = metrics_for_run(ws.db, image_run.id)
        artifacts = [a for a in list_artifacts(ws.db, "edit", head) if a.kind == "grid"]
    cfg = image_run.config
    assert image_run.state == "done" and text_run.id == image_run.id - 1 and text_run.config["edit_ids"] == [head]
    assert cfg["seeds"] == [0, 1] and cfg["steps"] == 1 and cfg["resolution"] == [SIZE, SIZE]
    assert cfg["judge"].startswith("tiny-judge:") and cfg["judge"].endswith("tiny-judge.safetensors")
    assert (cfg["history"], cfg["head_seq"], cfg["scope"], cfg["edit_ids"], cfg["world_size"]) == ("main", 3, "edit", [head], 1)

    finals = {m.name: m for m in rows if m.final}
    assert {m.edit_id for m in finals.values()} == {head}
    core = ("efficacy", "generality", "generality_75", "generality_90", "specificity", "f1", "gmean")
    assert set(finals) == set(core) | {f"baseline_{k}" for k in core}
    for m in finals.values():
        assert m.n == m.total and 0.0 <= m.value <= 1.0 and (m.std is None or 0.0 <= m.std <= 0.5)
    assert (finals["efficacy"].n, finals["generality"].n, finals["specificity"].n) == (SEEDS, 2 * SEEDS, SEEDS)
    assert finals["f1"].n == 3 * SEEDS
    running = [m for m in rows if not m.final]
    assert running and all(m.n <= m.total for m in running)
    # the printed table carries the stored image value
    line = next(l for l in r.stdout.splitlines() if "│ efficacy " in l)
    assert f"{finals['efficacy'].value:.4g}" in line

    assert len(artifacts) == 1
    grid = ws_root / artifacts[0].path
    assert grid.is_file() and hashlib.sha256(grid.read_bytes()).hexdigest() == artifacts[0].sha256
    with Image.open(grid) as im:
        # label column + 4 grid seeds capped at the 2 evaluated; rows: unedited, edited
        assert im.size == (LABEL_W + SEEDS * SIZE, 2 * SIZE)

    # one bar per progress task: text edits, images, and each metric's items, all run to completion
    tasks = {t.description: t for t in recording_printer.progress.tasks}
    assert set(tasks) == {"text-eval", "image-eval", "efficacy", "generality", "specificity"}
    assert (tasks["image-eval"].completed, tasks["image-eval"].total) == (2 * SEEDS * 4, 2 * SEEDS * 4)
    for name, total in (("efficacy", SEEDS), ("generality", 2 * SEEDS), ("specificity", SEEDS)):
        assert tasks[name].completed == tasks[name].total == total
    assert [e.done for e in events if e.task == "image-eval"] == sorted(e.done for e in events if e.task == "image-eval")


def test_missing_judge_and_bad_options_are_one_line_errors(ws_root, tmp_path):
    from refact_tui.services.workspace import Workspace
    from store.metrics import list_eval_runs

    with Workspace.open(ws_root) as ws:
        before = len(list_eval_runs(ws.db))
    missing = tmp_path / "nope.pt"
    r = invoke("--workspace", ws_root, "eval", "--judge", f"ViT-B-32:{missing}")
    assert r.exit_code == 1
    assert r.stderr.count("error:") == 1 and len(r.stderr.strip().splitlines()) == 1
    assert str(missing) in r.stderr and "--judge" in r.stderr
    r = invoke("--workspace", ws_root, "eval")  # the paper's judge, absent from the empty test HF cache
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k" in r.stderr and "hf download" in r.stderr
    with Workspace.open(ws_root) as ws:
        assert len(list_eval_runs(ws.db)) == before  # nothing was started or stored
    assert invoke("--workspace", ws_root, "eval", "1", "--history").exit_code == 2
    r = invoke("--workspace", ws_root, "eval", "--size", 12, "--judge", "x:y.pt")
    assert r.exit_code == 2 and "multiple of 8" in r.output
    r = invoke("--workspace", ws_root, "eval", "999", "--text-only")
    assert r.exit_code == 1 and "edit 999" in r.stderr and "refact history" in r.stderr


def test_text_encoder_workspace_evaluates_text_space_and_refuses_images(tmp_path_factory, judge_spec):
    """A plain transformers text-encoder folder is a valid model: edits and text metrics work, images don't."""
    from fixtures_models import tiny_text_encoder_dir

    from refact_tui.services.runner import run_worker

    root = tmp_path_factory.mktemp("te_eval") / "w"
    ws = new_workspace(root, tiny_text_encoder_dir(tmp_path_factory, family="clip"))
    with ws:
        queue(ws, [replace(r, positives=r.positives[:1], negatives=r.negatives[:1]) for r in sample_requests(1)])
        assert run_worker(ws, device="cpu").done == 1
    refused = invoke("--workspace", root, "eval", "1", "--seeds", "1", "--judge", judge_spec)
    assert refused.exit_code == 1
    assert "text encoder only" in refused.stderr and "--text-only" in refused.stderr
    assert "Traceback" not in refused.output
    text = invoke("--workspace", root, "eval", "1", "--text-only", "--json")
    assert text.exit_code == 0, text.output
    report = json.loads(text.stdout)
    assert 0.0 <= report["per_edit"]["1"]["text"]["p_target"] <= 1.0
