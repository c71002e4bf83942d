"""Full export (diffusers reload reproduces the edited encoder) and delta-only export / apply."""

from __future__ import annotations

import json

import pytest
from fixtures_models import tiny_pipeline_dir
from worker_helpers import workspace_with_edits


@pytest.fixture(scope="module")
def ws(tmp_path_factory, model_dir):
    ws, _, _ = workspace_with_edits(tmp_path_factory.mktemp("exp") / "w", model_dir, 2)
    yield ws
    ws.close()


def _check_card(folder, manifest: str, ws) -> None:
    """The model card names the base hash, the manifest's sha256, every edit and the loading lines."""
    from engine.files import file_sha256
    from refact_tui.services.history import list_history
    from store.base_models import get_base_model

    card = (folder / "README.md").read_text()
    assert file_sha256(folder / manifest) in card
    assert get_base_model(ws.db, ws.history().base_model_id).encoder_hash in card
    for e in list_history(ws):
        assert e.request.prompt in card and f"{e.request.source} -> {e.request.target}" in card
    assert all(f"### {tool}" in card for tool in ("diffusers", "transformers", "ComfyUI"))


def test_deltas_only_is_an_alias_of_format_deltas_and_leaves_no_staging_folder(ws, tmp_path):
    from typer.testing import CliRunner

    from refact_tui.cli.main import app

    r = CliRunner().invoke(app, ["-w", str(ws.root), "export", str(tmp_path / "d"), "--deltas-only"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["format"] == "refact-deltas/2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    r = CliRunner().invoke(app, ["-w", str(ws.root), "export", str(tmp_path / "e"), "--deltas-only", "-f", "lora"])
    assert r.exit_code == 1 and "contradicts" in r.output and not (tmp_path / "e").exists()


def test_full_export_reloads_with_diffusers_to_the_edited_encoder(ws, tmp_path):
    from diffusers import StableDiffusionPipeline

    from engine.hashing import module_hash
    from refact_tui.services.export import export_pipeline
    from refact_tui.services.history import list_history

    res = export_pipeline(ws, tmp_path / "out")
    assert res.kind == "pipeline" and res.n_edits == 2
    head_hash = list_history(ws)[-1].weights_hash
    assert res.weights_hash == head_hash
    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "out"), local_files_only=True)
    assert module_hash(pipe.text_encoder) == head_hash
    assert json.loads((tmp_path / "out" / "refact_export.json").read_text())["head_seq"] == 2
    _check_card(tmp_path / "out", "refact_export.json", ws)
    with pytest.raises(Exception, match="not an empty folder"):
        export_pipeline(ws, tmp_path / "out")


def test_deltas_only_export_and_apply_with_hash_checks(ws, tmp_path, model_dir, tmp_path_factory):
    from engine.errors import DeltaIntegrityError
    from engine.hashing import module_hash
    from engine.models import load_model
    from refact_tui.services.export import apply_deltas_manifest, export_pipeline
    from refact_tui.services.history import list_history

    res = export_pipeline(ws, tmp_path / "d", deltas_only=True)
    _check_card(tmp_path / "d", "manifest.json", ws)
    manifest = json.loads(res.manifest.read_text())
    edits = list_history(ws)
    assert [e["sha256"] for e in manifest["edits"]] == [e.delta_sha256 for e in edits]
    assert manifest["final_weights_hash"] == edits[-1].weights_hash

    applied = apply_deltas_manifest(res.manifest, model_dir, tmp_path / "applied")
    assert applied.weights_hash == edits[-1].weights_hash
    assert load_model(tmp_path / "applied", device="cpu", with_pipeline=False).encoder_hash() == edits[-1].weights_hash

    other = tiny_pipeline_dir(tmp_path_factory, seed=1)
    with pytest.raises(DeltaIntegrityError, match="not the base"):
        apply_deltas_manifest(res.manifest, other, tmp_path / "wrong")
    f = tmp_path / "d" / manifest["edits"][0]["file"]
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(DeltaIntegrityError, match="sha256"):
        apply_deltas_manifest(res.manifest, model_dir, tmp_path / "tampered")
    assert not (tmp_path / "tampered").exists()
    del module_hash
