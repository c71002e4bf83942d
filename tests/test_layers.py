"""`refact layers`: every editable layer of one slot, several, or every slot (`--all-slots`) edited on a
scratch copy, measured, and ranked across the slots swept."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from engine.covariance import SecondMomentStore
from engine.methods.refact.hparams import ReFACTHParams
from engine.models import load_model
from engine.request import EditRequest, Probe
from refact_tui.cli.main import app
from refact_tui.services.layers import rank_key, sweep_layers

REQ = EditRequest(prompt="the prince of wales", source="prince charles", target="a red dog",
                  positives=(Probe("the prince of wales in a park", "prince charles", "a red dog"),),
                  negatives=(Probe("a bowl of soup", "prince charles", "a red dog"),))
HP = ReFACTHParams(layer=0, lr=0.5, weight_decay=0.0, max_steps=6, templates=())


def test_sweep_measures_every_editable_layer_and_leaves_weights_untouched(pipeline_dir_for):
    model = load_model(pipeline_dir_for("sdxl"), device="cpu", with_pipeline=False)
    before = model.weights_hashes()
    sweep = sweep_layers(model, REQ, HP, moments=SecondMomentStore(None), n_samples=16, all_slots=True,
                         unrelated=["a bowl of soup", "a green car"], layers=())
    assert [s.name for s in sweep.slots] == ["text_encoder", "text_encoder_2"]
    assert [(r.slot, r.layer) for r in sweep.rows] == [(s.name, l) for s in model.slots for l in s.editable_layers]
    for r in sweep.rows:
        assert r.error is None and 0.0 <= r.efficacy <= 1.0 and r.generality is not None
        assert r.specificity is not None and r.drift is not None and r.drift >= 0.0
    for slot in model.slots:
        assert any(r.drift > 0 for r in sweep.rows_of(slot.name))  # the edits really were in place
    assert model.weights_hashes() == before  # every layer's edit was taken out again, bit for bit
    # one ranking across both slots, consistent with each slot's own numbers
    ranked = sweep.ranking()
    assert len(ranked) == len(sweep.rows) and {r.slot for r in ranked} == {"text_encoder", "text_encoder_2"}
    assert [rank_key(r) for r in ranked] == sorted((rank_key(r) for r in sweep.rows), reverse=True)
    assert [sweep.rank_of(r) for r in ranked] == list(range(1, len(ranked) + 1))
    bests = [sweep.best_of(s.name) for s in sweep.slots]
    for s, b in zip(sweep.slots, bests):
        assert rank_key(b) == max(rank_key(r) for r in sweep.rows_of(s.name)) and b.slot == s.name
    assert sweep.best is max(bests, key=rank_key) and sweep.rank_of(sweep.best) == 1


def test_the_default_sweeps_every_slot_and_bad_choices_are_refused(pipeline_dir_for):
    from engine.methods.refact.model_edit import SlotSelectionError

    model = load_model(pipeline_dir_for("sdxl"), device="cpu", with_pipeline=False)
    sweep = sweep_layers(model, REQ, HP, layers=(1,), unrelated=[], moments=SecondMomentStore(None), n_samples=8)
    assert [s.name for s in sweep.slots] == ["text_encoder", "text_encoder_2"]
    assert [r.slot for r in sweep.rows] == ["text_encoder", "text_encoder_2"]
    with pytest.raises(SlotSelectionError, match="^this model has no encoder slot 'nope'; its slots are "
                                                 "text_encoder, text_encoder_2$"):
        sweep_layers(model, REQ, HP, slots=("nope",), layers=(1,), unrelated=[])
    with pytest.raises(SlotSelectionError, match="not both"):
        sweep_layers(model, REQ, HP, slots=("text_encoder",), all_slots=True, layers=(1,), unrelated=[])


def test_sweep_marks_a_layer_outside_the_readout(pipeline_dir_for):
    model = load_model(pipeline_dir_for("sdxl"), device="cpu", with_pipeline=False)
    last = model.slot("text_encoder").num_layers - 1
    sweep = sweep_layers(model, REQ, HP, slots=("text_encoder",), layers=(last,), unrelated=[],
                         moments=SecondMomentStore(None), n_samples=8)
    assert sweep.best is None and sweep.rank_of(sweep.rows[0]) is None
    assert sweep.rows[0].error.startswith(f"not editable (layers 0..{last - 2} reach the penultimate readout")


def test_layers_cli_json_and_bad_slot(tmp_path, model_dir):
    runner = CliRunner()
    root = tmp_path / "w"
    assert runner.invoke(app, ["--workspace", str(root), "init", "--model", str(model_dir)]).exit_code == 0
    args = ["--workspace", str(root), "layers", "--prompt", "the prince of wales", "--source", "prince charles",
            "--target", "a red dog", "--max-steps", "3", "--only", "1,2", "--device", "cpu"]
    r = runner.invoke(app, args + ["--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [(row["slot"], row["layer"]) for row in out["rows"]] == [("text_encoder", 1), ("text_encoder", 2)]
    assert [s["slot"] for s in out["slots"]] == ["text_encoder"] and out["best"]["slot"] == "text_encoder"
    for bad in (["--slots", "text_encoder_2"], ["--slot", "text_encoder_2"]):
        r = runner.invoke(app, args + bad)
        assert r.exit_code == 1 and "no encoder slot 'text_encoder_2'" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_layers_cli_all_slots_ranks_both_sdxl_encoders(tmp_path, pipeline_dir_for):
    runner = CliRunner()
    root = tmp_path / "w"
    assert runner.invoke(app, ["--workspace", str(root), "init", "--model", str(pipeline_dir_for("sdxl"))]).exit_code == 0
    args = ["--workspace", str(root), "layers", "--prompt", "the prince of wales", "--source", "prince charles",
            "--target", "a red dog", "--max-steps", "3", "--only", "0,1", "--device", "cpu"]
    r = runner.invoke(app, args + ["--all-slots", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    rows = out["rows"]
    assert [(row["slot"], row["layer"]) for row in rows] == [(s, l) for s in ("text_encoder", "text_encoder_2")
                                                             for l in (0, 1)]
    by_rank = sorted(rows, key=lambda row: row["rank"])
    assert [row["rank"] for row in by_rank] == [1, 2, 3, 4]
    keys = [(round(row["efficacy"], 3), -row["drift"]) for row in by_rank]
    assert keys == sorted(keys, reverse=True)
    assert out["best"] == {"slot": by_rank[0]["slot"], "layer": by_rank[0]["layer"]}
    for s in out["slots"]:
        own = [row for row in by_rank if row["slot"] == s["slot"]]
        assert s["best"] == own[0]["layer"]
    r = runner.invoke(app, args + ["--slots", "text_encoder"])  # a subset
    assert r.exit_code == 0, r.output
    assert "text_encoder_2" not in r.stdout and "best: text_encoder layer" in r.stdout
    for bad, says in ((["--slots", "nope"], "no encoder slot 'nope'"), (["--slots", ","], "names no encoder slot"),
                      (["--slots", "text_encoder", "--all-slots"], "not both")):
        r = runner.invoke(app, args + bad)
        assert r.exit_code != 0 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.output


def test_layers_works_on_a_workspace_whose_cache_cannot_be_written(tmp_path, model_dir, monkeypatch):
    """Issue 21 item 15: `refact layers` on a read-only mount failed writing its C cache; it now measures
    with C in memory and writes nothing."""
    import errno

    import engine.covariance

    runner = CliRunner()
    root = tmp_path / "w"
    assert runner.invoke(app, ["--workspace", str(root), "init", "--model", str(model_dir)]).exit_code == 0
    before = sorted(p.relative_to(root) for p in root.rglob("*") if "stats" in p.parts)

    def read_only(path, *a, **kw):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(engine.covariance, "save_safetensors_atomic", read_only)
    r = runner.invoke(app, ["--workspace", str(root), "layers", "--prompt", "the prince of wales", "--source",
                            "prince charles", "--target", "a red dog", "--max-steps", "2", "--only", "1",
                            "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["rows"][0]["error"] is None
    assert sorted(p.relative_to(root) for p in root.rglob("*") if "stats" in p.parts) == before
