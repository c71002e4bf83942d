"""A history with a TIME edit: the recorded weights hash covers the UNet matrices it changed, rollback /
rollforward / replay rebuild the UNet bit for bit and a wrong UNet is caught, and `refact export`
writes the edited UNet (a diffusers reload gives exactly the edited weights)."""

from __future__ import annotations

import shutil

import pytest
import torch
from worker_helpers import new_workspace, queue, rebuild_hash, sample_requests

from engine.request import EditRequest


@pytest.fixture(scope="module")
def hist(tmp_path_factory, model_dir):
    """Edits refact, time, refact on the tiny pipeline: (workspace, edits, deltas)."""
    from refact_tui.services.methods import with_method
    from refact_tui.services.queue import add_edit
    from refact_tui.services.runner import run_worker
    from refact_tui.services.working_model import load_deltas
    from store.edits import applied_edits

    ws = new_workspace(tmp_path_factory.mktemp("unet") / "w", model_dir)
    first, third = sample_requests(2)
    queue(ws, [first])
    add_edit(ws, with_method(EditRequest("A banana", "A banana", "A blue banana"), "time"))
    queue(ws, [third])
    summary = run_worker(ws, device="cpu")
    assert summary.done == 3, summary.failures
    edits = applied_edits(ws.db, ws.history().id)
    yield ws, edits, load_deltas(ws, edits)
    ws.close()


def _base_pipeline(path):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True)


def _expected_hash(model_dir, deltas) -> str:
    """The hash of base + deltas computed by hand: text encoder state dict + the edited UNet matrices."""
    from engine.hashing import hash_named_tensors, module_hash
    from engine.slots import combined_hash

    pipe = _base_pipeline(model_dir)
    for d in deltas:
        d.apply(pipe.unet if d.components == ["unet"] else pipe.text_encoder)
    names = sorted({u.module for d in deltas for u in d.updates if u.component == "unet"})
    unet = hash_named_tensors((f"{n}.weight", pipe.unet.get_submodule(n).weight) for n in names)
    return combined_hash({"text_encoder": module_hash(pipe.text_encoder), "unet": unet})


def _unet_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_recorded_hash_covers_the_unet_after_a_time_edit(hist, model_dir):
    ws, edits, deltas = hist
    # the ReFACT edit before any UNet edit keeps the plain SD1 encoder hash (existing workspaces)
    assert edits[0].weights_hash == rebuild_hash(model_dir, [edits_path(ws, edits[0])])
    # TIME leaves the text encoder alone, yet the recorded hash changes: it now covers the UNet
    assert edits[1].weights_hash != edits[0].weights_hash
    assert edits[1].weights_hash == _expected_hash(model_dir, deltas[:2])
    # a later ReFACT edit still covers the UNet the TIME edit changed
    assert edits[2].weights_hash == _expected_hash(model_dir, deltas)


def edits_path(ws, edit):
    from refact_tui.services.working_model import delta_file

    return delta_file(ws, edit)


def test_rollback_rollforward_replay_rebuild_the_unet_bit_for_bit(hist, model_dir):
    from refact_tui.services.history import replay, rollback, rollforward
    from refact_tui.services.working_model import load_history_model
    from store.edits import applied_edits
    from store.histories import set_current_history

    ws, edits, deltas = hist
    main = ws.history()
    base = _base_pipeline(model_dir)
    edited = _base_pipeline(model_dir)
    deltas[1].apply(edited.unet)
    assert not _unet_equal(base.unet, edited.unet)
    try:
        r = rollback(ws, 1)
        assert r.weights_hash == edits[0].weights_hash
        at1 = load_history_model(ws, with_pipeline=True).model
        assert _unet_equal(at1.pipeline.unet, base.unet)  # the TIME edit is gone, bit for bit
        r = rollforward(ws, 2)
        assert r.weights_hash == edits[1].weights_hash
        at2 = load_history_model(ws, with_pipeline=True).model
        assert _unet_equal(at2.pipeline.unet, edited.unet)
        rollforward(ws, 3)
        new = replay(ws)  # re-applies the three deltas onto a fresh base pipeline, hashing each step
        copies = applied_edits(ws.db, new.id)
        assert [c.weights_hash for c in copies] == [e.weights_hash for e in edits]
        assert _unet_equal(load_history_model(ws, new.id, "cpu").model.pipeline.unet,
                           load_history_model(ws, main.id, "cpu").model.pipeline.unet)
    finally:
        set_current_history(ws.db, main.id)
    assert ws.history().head_seq == 3


def test_a_wrong_unet_is_caught_on_rebuild(hist, model_dir, tmp_path):
    from diffusers import UNet2DConditionModel

    from engine.errors import DeltaIntegrityError
    from refact_tui.services.history import rollback
    from refact_tui.services.working_model import load_history_model

    ws, edits, deltas = hist
    other = tmp_path / "model"
    shutil.copytree(model_dir, other)
    unet = UNet2DConditionModel.from_pretrained(str(model_dir / "unet"))
    w = unet.get_submodule(deltas[1].updates[0].module).weight
    with torch.no_grad():
        w[0, 0] += 1e-3
    shutil.rmtree(other / "unet")
    unet.save_pretrained(str(other / "unet"), safe_serialization=True)
    base_id = ws.history().base_model_id
    old = ws.db.execute("SELECT path FROM base_models WHERE id = ?", [base_id]).fetchone()[0]
    ws.db.execute("UPDATE base_models SET path = ? WHERE id = ?", [str(other), base_id])
    try:
        assert load_history_model(ws, upto_seq=1).weights_hash == edits[0].weights_hash  # no UNet edit yet
        for seq in (2, 3):
            with pytest.raises(DeltaIntegrityError, match="gave different weights"):
                load_history_model(ws, upto_seq=seq)
        with pytest.raises(DeltaIntegrityError):
            rollback(ws, 2)
        assert ws.history().head_seq == 3  # nothing changed
    finally:
        ws.db.execute("UPDATE base_models SET path = ? WHERE id = ?", [old, base_id])


def test_export_writes_the_edited_unet(hist, model_dir, tmp_path):
    from engine.hashing import module_hash
    from refact_tui.services.export import apply_deltas_manifest, export_pipeline
    from refact_tui.services.working_model import load_history_model

    ws, edits, deltas = hist
    head = load_history_model(ws, with_pipeline=True).model
    res = export_pipeline(ws, tmp_path / "out")
    assert res.kind == "pipeline" and res.weights_hash == edits[-1].weights_hash
    pipe = _base_pipeline(tmp_path / "out")
    assert _unet_equal(pipe.unet, head.pipeline.unet)  # every UNet tensor, bit for bit
    assert module_hash(pipe.text_encoder) == module_hash(head.text_encoder)
    name = deltas[1].updates[0].module
    assert not torch.equal(pipe.unet.get_submodule(name).weight,
                           _base_pipeline(model_dir).unet.get_submodule(name).weight)
    # the delta set applied to a fresh base reproduces the final hash (UNet included) and the same UNet
    d = export_pipeline(ws, tmp_path / "d", deltas_only=True)
    applied = apply_deltas_manifest(d.manifest, model_dir, tmp_path / "applied")
    assert applied.weights_hash == edits[-1].weights_hash
    assert _unet_equal(_base_pipeline(tmp_path / "applied").unet, head.pipeline.unet)
