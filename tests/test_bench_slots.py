"""`refact bench` edits what a queued job would: every encoder slot of SDXL / SD3, per-slot options as
`queue add`, an integrity hash over every slot, hyperparameters checked before the first row, no run
stored when every edit failed, and reruns only on the model they recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner
from worker_helpers import FAST, new_workspace, sample_requests

from refact_tui.cli.main import app

HP = {"layer": 1, "lr": FAST.lr, "max_steps": 4, "prob_threshold": FAST.prob_threshold}
SLOTS = {"sdxl": ["text_encoder", "text_encoder_2"], "sd3": ["text_encoder", "text_encoder_2", "text_encoder_3"]}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_row(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bench_slots") / "row.jsonl"
    path.write_text(json.dumps(sample_requests(1)[0].to_dict()) + "\n", encoding="utf-8")
    return path


def _workspace(tmp_path_factory, pipeline_dir_for, arch: str):
    return new_workspace(tmp_path_factory.mktemp(f"bench_{arch}") / "w", pipeline_dir_for(arch))


def _opts(path, **kw):
    from refact_tui.services.bench_config import BenchOptions

    return BenchOptions(file=str(path), text_only=True, device="cpu", **{"hparams": HP, **kw})


def _count(ws) -> int:
    return ws.db.execute("SELECT COUNT(*) FROM bench_runs").fetchone()[0]


@pytest.mark.parametrize("arch", ["sdxl", "sd3"])
def test_text_only_bench_edits_every_text_encoder(tmp_path_factory, pipeline_dir_for, one_row, monkeypatch, arch):
    """The row reports every slot, and inside the row's applied edit every encoder's output moved (the
    first slot only, as before, would leave text_encoder_2's output equal to the base's)."""
    import engine.evaluation.text_metrics as tm
    from refact_tui.services.bench import run_bench
    from store.bench_runs import get_bench_run

    prompt = sample_requests(1)[0].prompt
    seen: dict[str, list[float]] = {}
    base: dict[str, torch.Tensor] = {}
    real = tm.text_scores

    def outputs(model) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {s.name: s.adapter.encode(s.tokenizer, [prompt]) for s in model.slots}

    def spying(model, frozen, request):
        for name, out in (outputs(model) if base else {}).items():  # the references run before any row
            seen.setdefault(name, []).append(float((out - base[name]).norm() / base[name].norm()))
        return real(model, frozen, request)

    def before_row(model, _i):
        base.update(outputs(model))

    monkeypatch.setattr(tm, "text_scores", spying)
    with _workspace(tmp_path_factory, pipeline_dir_for, arch) as ws:
        report = run_bench(ws, _opts(one_row), on_row_start=before_row)
        (row,) = report.rows
        assert row.error is None
        assert [p["slot"] for p in row.edited] == SLOTS[arch]
        assert row.edited[0]["layer"] == 1 and all(isinstance(p["layer"], int) for p in row.edited)
        # inside the row's edit (text_scores also scores the references, before any row)
        assert set(seen) == set(SLOTS[arch]) and all(moved[-1] > 1e-4 for moved in seen.values()), seen
        assert get_bench_run(ws.db, report.run_id).summary["edited"] == [row.edited]


@pytest.mark.parametrize("slot", ["text_encoder", "text_encoder_2"])
def test_the_integrity_hash_catches_a_leaked_edit_in_any_slot(tmp_path_factory, pipeline_dir_for, one_row, slot):
    from engine.errors import DeltaIntegrityError
    from refact_tui.services.bench import run_bench

    two = one_row.with_name("two.jsonl")
    two.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in sample_requests(2)), encoding="utf-8")

    def leak(model, i):
        if i == 1:  # as if row 1's edit had not been undone in this slot
            with torch.no_grad():
                model.slot(slot).adapter.fc2(0).weight[0, 0] += 1e-3

    with _workspace(tmp_path_factory, pipeline_dir_for, "sdxl") as ws:
        runs = _count(ws)
        with pytest.raises(DeltaIntegrityError, match="before row 2 the edited weights differ from the base"):
            run_bench(ws, _opts(two), on_row_start=leak)
        assert _count(ws) == runs


def test_cli_takes_slots_and_per_slot_layers_and_reports_them(tmp_path_factory, pipeline_dir_for, one_row):
    ws = _workspace(tmp_path_factory, pipeline_dir_for, "sdxl")
    root = ws.root
    ws.close()
    r = CliRunner().invoke(app, ["-w", str(root), "bench", str(one_row), "--text-only", "--device", "cpu",
                                 "--slots", "text_encoder_2", "--layer", "text_encoder_2=1", "--hp", "max_steps=3",
                                 "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [(p["slot"], p["layer"]) for p in out["rows"][0]["edited"]] == [("text_encoder_2", 1)]
    r = CliRunner().invoke(app, ["-w", str(root), "bench", str(one_row), "--text-only", "--device", "cpu",
                                 "--layer", "text_encoder_9=1"])
    assert r.exit_code == 1 and "no encoder slot 'text_encoder_9'" in r.stderr
    r = CliRunner().invoke(app, ["-w", str(root), "bench", str(one_row), "--method", "time", "--slots", "text_encoder"])
    assert r.exit_code == 1 and "--layer and --slots choose ReFACT" in r.stderr


def test_bad_hyperparameters_are_refused_before_any_row_and_all_failed_runs_are_not_stored(
        tmp_path_factory, model_dir, one_row):
    """Issue 21 item 9: --hp layer=999 is one line before the first row; a run in which every edit was
    refused (here: a division floor no edit can pass) stores nothing."""
    from engine.methods.refact.hparams import HParamsError
    from refact_tui.services.bench import BenchError, run_bench

    with new_workspace(tmp_path_factory.mktemp("bench_hp") / "w", model_dir) as ws:
        rows = []
        with pytest.raises(HParamsError, match="layer 999 is out of range"):
            run_bench(ws, _opts(one_row, hparams={**HP, "layer": 999}), on_row_start=lambda m, i: rows.append(i))
        assert rows == [] and _count(ws) == 0
        with pytest.raises(BenchError, match="every edit of the run failed .*min_division.*nothing was stored"):
            run_bench(ws, _opts(one_row, hparams={**HP, "min_division": 1e9}))
        assert _count(ws) == 0


def test_rerun_refuses_a_model_whose_weights_changed(tmp_path_factory, model_dir, one_row):
    """Issue 21 item 18: a rerun checks the recorded model hashes, not only the request file."""
    from refact_tui.services.bench import BenchError, rerun_bench, run_bench

    with new_workspace(tmp_path_factory.mktemp("bench_rerun") / "w", model_dir) as ws:
        first = run_bench(ws, _opts(one_row))
        config = json.loads(ws.db.execute("SELECT config_json FROM bench_runs WHERE id = ?",
                                          [first.run_id]).fetchone()[0])
        config["model"]["weights_hash"] = "0" * 64  # as recorded on weights that are not these
        ws.db.execute("UPDATE bench_runs SET config_json = ? WHERE id = ?", [json.dumps(config), first.run_id])
        ws.db.conn.commit()
        with pytest.raises(BenchError, match=f"is not the one bench run {first.run_id} edited \\(weights hash"):
            rerun_bench(ws, first.run_id)
        assert _count(ws) == 1
