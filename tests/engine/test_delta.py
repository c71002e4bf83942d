"""EditDelta: apply / revert, atomic save, load with checksum."""

from __future__ import annotations

import hashlib

import pytest
import torch

from engine.delta import EditDelta, apply_deltas
from engine.errors import DeltaIntegrityError


def make_delta(adapter, layer=1, seed=0, scale=0.1):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(adapter.key_size, generator=gen)
    r = scale * torch.randn(adapter.hidden_size, generator=gen)
    return EditDelta(layer=layer, module=adapter.fc2_name(layer), u=u, r=r, meta={"edit_id": "7", "note": "ünï"})


def test_save_load_round_trip(tmp_path, tiny_clip):
    d = make_delta(tiny_clip.adapter)
    path = tmp_path / "deltas" / "e7.safetensors"
    sha = d.save(path)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [p.name for p in path.parent.iterdir()] == ["e7.safetensors"]  # no temp file left
    back = EditDelta.load(path, expected_sha256=sha)
    assert (back.layer, back.module) == (1, "encoder.layers.1.mlp.fc2")
    assert torch.equal(back.u, d.u) and torch.equal(back.r, d.r)
    assert back.meta == {"edit_id": "7", "note": "ünï"}


def test_tampering_is_detected(tmp_path, tiny_clip):
    path = tmp_path / "e.safetensors"
    sha = make_delta(tiny_clip.adapter).save(path)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x01  # flip one bit of r
    path.write_bytes(bytes(raw))
    with pytest.raises(DeltaIntegrityError, match="sha256"):
        EditDelta.load(path, expected_sha256=sha)
    with pytest.raises(DeltaIntegrityError, match="missing"):
        EditDelta.load(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DeltaIntegrityError, match="not a readable delta"):
        EditDelta.load(tmp_path / "junk.safetensors")


def test_apply_then_revert_restores(tiny_clip):
    w = tiny_clip.adapter.fc2(1).weight
    w0 = w.detach().clone()
    d = make_delta(tiny_clip.adapter)
    d.apply(tiny_clip)
    torch.testing.assert_close(w - w0, torch.outer(d.r, d.u), rtol=0, atol=1e-6)
    d.revert(tiny_clip)
    torch.testing.assert_close(w, w0, rtol=0, atol=1e-6)
    assert not torch.equal(w0, w0 + torch.outer(d.r, d.u))


def test_apply_deltas_is_all_or_nothing(tiny_clip):
    adapter = tiny_clip.adapter
    w0 = [adapter.fc2(i).weight.detach().clone() for i in range(3)]
    good = [make_delta(adapter, layer=0, seed=1), make_delta(adapter, layer=2, seed=2)]
    assert apply_deltas(tiny_clip, good) == 2
    assert not torch.equal(adapter.fc2(0).weight, w0[0]) and not torch.equal(adapter.fc2(2).weight, w0[2])
    for d in reversed(good):
        d.revert(tiny_clip)
    bad = EditDelta(layer=1, module="encoder.layers.1.mlp.fc2", u=torch.ones(5), r=torch.ones(32))
    with pytest.raises(DeltaIntegrityError, match="does not fit"):
        apply_deltas(tiny_clip, [good[0], bad])
    for i in range(3):
        torch.testing.assert_close(adapter.fc2(i).weight, w0[i], rtol=0, atol=1e-6)
    missing = EditDelta(layer=1, module="encoder.layers.9.mlp.fc2", u=torch.ones(64), r=torch.ones(32))
    with pytest.raises(DeltaIntegrityError, match="does not have"):
        missing.apply(tiny_clip)


def test_v01_delta_files_still_load(tmp_path, tiny_clip):
    """A refact-delta/1 file (u, r and layer/module metadata) loads as one rank-one update."""
    from engine.files import save_safetensors_atomic

    d = make_delta(tiny_clip.adapter, layer=2)
    path = tmp_path / "v1.safetensors"
    save_safetensors_atomic(
        path, {"u": d.u, "r": d.r}, {"format": "refact-delta/1", "layer": "2", "module": d.module, "edit_id": "7"}
    )
    back = EditDelta.load(path)
    assert (back.layer, back.module, back.component) == (2, d.module, "text_encoder")
    assert torch.equal(back.u, d.u) and torch.equal(back.r, d.r) and back.meta == {"edit_id": "7"}


def test_low_rank_multi_update_round_trip(tmp_path, tiny_clip):
    """A v2 delta with two updates of rank 3 saves, loads and applies W += L R^T to each matrix."""
    from engine.delta import MatrixUpdate

    adapter = tiny_clip.adapter
    gen = torch.Generator().manual_seed(3)
    ups = [
        MatrixUpdate("text_encoder", adapter.fc2_name(i), torch.randn(adapter.hidden_size, 3, generator=gen),
                     torch.randn(adapter.key_size, 3, generator=gen), i)
        for i in (0, 2)
    ]
    d = EditDelta(ups, {"kind": "batch"})
    sha = d.save(tmp_path / "b.safetensors")
    back = EditDelta.load(tmp_path / "b.safetensors", expected_sha256=sha)
    assert [x.rank for x in back.updates] == [3, 3] and back.meta == {"kind": "batch"}
    w0 = [adapter.fc2(i).weight.detach().clone() for i in (0, 2)]
    back.apply(tiny_clip)
    for (i, x), w in zip(zip((0, 2), ups), w0):
        torch.testing.assert_close(adapter.fc2(i).weight - w, x.left @ x.right.T, rtol=0, atol=1e-5)
    with pytest.raises(DeltaIntegrityError, match="not a single rank-one"):
        _ = back.u
