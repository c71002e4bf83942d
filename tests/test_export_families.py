"""Exporting multi-encoder edits: a hand-built v2 delta touching two encoders of a tiny SDXL (and CLIP +
T5 of a tiny FLUX) is applied from a deltas manifest, saved, and reloaded with diffusers: every encoder
is exactly the edited one, everything else exactly the base."""

from __future__ import annotations

import json

import pytest
import torch

from engine.delta import EditDelta, MatrixUpdate
from engine.hashing import module_hash

EDITS = {
    "sdxl": [("text_encoder", 1), ("text_encoder_2", 2)],
    "flux": [("text_encoder", 2), ("text_encoder_2", 1)],
}


def _hand_built_delta(model, arch: str) -> EditDelta:
    gen = torch.Generator().manual_seed(7)
    updates = []
    for slot_name, layer in EDITS[arch]:
        slot = model.slot(slot_name)
        module = list(slot.fc2_modules())[layer]
        out_dim, in_dim = slot.fc2_modules()[module].weight.shape
        updates.append(MatrixUpdate(slot_name, module, torch.randn(out_dim, 2, generator=gen) * 0.05,
                                    torch.randn(in_dim, 2, generator=gen), layer))
    return EditDelta(updates=updates, meta={"method": "hand-built"})


@pytest.mark.parametrize("arch", ["sdxl", "flux"])
def test_apply_deltas_export_reloads_every_edited_encoder_exactly(arch, pipeline_dir_for, tmp_path):
    from diffusers import DiffusionPipeline

    from engine.models import load_model
    from refact_tui.services.export import MANIFEST_FORMAT, apply_deltas_manifest, combined_weights_hash

    folder = pipeline_dir_for(arch)
    model = load_model(folder, device="cpu")
    base_hash = combined_weights_hash(model)
    base_parts = {n: module_hash(getattr(model.pipeline, n)) for n in ("vae", "unet", "transformer")
                  if getattr(model.pipeline, n, None) is not None}
    delta = _hand_built_delta(model, arch)
    assert delta.components == [name for name, _ in EDITS[arch]]
    (tmp_path / "d" / "deltas").mkdir(parents=True)
    sha = delta.save(tmp_path / "d" / "deltas" / "0001.safetensors")
    expected_w = {}
    for x in delta.updates:
        w = x.linear(model).weight
        expected_w[(x.component, x.module)] = (w.detach().double() + x.matrix().double()).float()
    delta.apply(model)
    edited_hashes = model.weights_hashes()
    manifest = {
        "format": MANIFEST_FORMAT, "history": "main",
        "base": {"source": str(folder), "kind": "sd-pipeline", "encoder_family": "clip", "encoder_hash": base_hash},
        "final_weights_hash": combined_weights_hash(model),
        "edits": [{"seq": 1, "file": "deltas/0001.safetensors", "sha256": sha, "before_hash": base_hash,
                   "weights_hash": combined_weights_hash(model), "weights_hashes": edited_hashes}],
    }
    mpath = tmp_path / "d" / "manifest.json"
    mpath.write_text(json.dumps(manifest))

    res = apply_deltas_manifest(mpath, folder, tmp_path / "out")
    assert res.kind == "pipeline" and res.weights_hashes == edited_hashes
    reloaded = DiffusionPipeline.from_pretrained(tmp_path / "out", local_files_only=True)
    for slot_name, hash_ in edited_hashes.items():
        assert module_hash(getattr(reloaded, slot_name)) == hash_, slot_name
    for x in delta.updates:
        w = getattr(reloaded, x.component).get_submodule(x.module).weight
        assert (w - expected_w[(x.component, x.module)]).abs().max().item() < 1e-6
    for name, hash_ in base_parts.items():
        assert module_hash(getattr(reloaded, name)) == hash_, name
    # both encoders really changed: the base folder's encoders differ from the export's
    base_pipe = load_model(folder, device="cpu", with_pipeline=False)
    assert all(base_pipe.slot(n).encoder_hash() != edited_hashes[n] for n, _ in EDITS[arch])


def test_save_model_refuses_a_pipeline_that_lost_an_edited_encoder(pipeline_dir_for, tmp_path):
    from engine.errors import EngineError
    from engine.models import load_model
    from refact_tui.services.export import save_model

    model = load_model(pipeline_dir_for("sdxl"), device="cpu")
    model.slots[1].text_encoder = type(model.slots[1].text_encoder)(model.slots[1].text_encoder.config)
    with pytest.raises(EngineError, match="text_encoder_2"):
        save_model(model, tmp_path / "x")
    assert not (tmp_path / "x").exists()
