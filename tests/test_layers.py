"""`refact layers`: every editable layer of a slot edited on a scratch copy and measured."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from engine.covariance import SecondMomentStore
from engine.methods.refact.hparams import ReFACTHParams
from engine.models import load_model
from engine.request import EditRequest, Probe
from refact_tui.cli.main import app
from refact_tui.services.layers import sweep_layers

REQ = EditRequest(prompt="the prince of wales", source="prince charles", target="a red dog",
                  positives=(Probe("the prince of wales in a park", "prince charles", "a red dog"),),
                  negatives=(Probe("a bowl of soup", "prince charles", "a red dog"),))
HP = ReFACTHParams(layer=0, lr=0.5, weight_decay=0.0, max_steps=6, templates=())


def test_sweep_measures_every_editable_layer_and_leaves_weights_untouched(pipeline_dir_for):
    model = load_model(pipeline_dir_for("sdxl"), device="cpu", with_pipeline=False)
    before = model.weights_hashes()
    sweeps = sweep_layers(model, REQ, HP, moments=SecondMomentStore(None), n_samples=16,
                          unrelated=["a bowl of soup", "a green car"], layers=())
    assert [s.slot for s in sweeps] == ["text_encoder", "text_encoder_2"]
    for s, slot in zip(sweeps, model.slots):
        assert [r.layer for r in s.rows] == list(slot.editable_layers)
        for r in s.rows:
            assert r.error is None and 0.0 <= r.efficacy <= 1.0 and r.generality is not None
            assert r.specificity is not None and r.drift is not None and r.drift >= 0.0
        assert any(r.drift > 0 for r in s.rows)  # the edits really were in place while measured
    assert model.weights_hashes() == before  # every layer's edit was taken out again, bit for bit


def test_sweep_marks_a_layer_outside_the_readout(pipeline_dir_for):
    model = load_model(pipeline_dir_for("sdxl"), device="cpu", with_pipeline=False)
    last = model.slot("text_encoder").num_layers - 1
    (sweep,) = sweep_layers(model, REQ, HP, slots=("text_encoder",), layers=(last,), unrelated=[],
                            moments=SecondMomentStore(None), n_samples=8)
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
    assert [row["layer"] for row in out[0]["layers"]] == [1, 2] and out[0]["slot"] == "text_encoder"
    r = runner.invoke(app, args + ["--slot", "text_encoder_2"])
    assert r.exit_code == 1 and "no encoder slot 'text_encoder_2'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


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
    assert json.loads(r.stdout)[0]["layers"][0]["error"] is None
    assert sorted(p.relative_to(root) for p in root.rglob("*") if "stats" in p.parts) == before
