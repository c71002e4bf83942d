"""Stacking deltas into LoRA factors: a history of edits is one adapter whose columns are the edits'
(a batch edit of rank k is k columns, one adapter with --per-edit), and the columns split back into the
exact deltas; which matrices diffusers' loader reaches."""

from __future__ import annotations

import pytest
import torch

from engine.delta import EditDelta, MatrixUpdate
from engine.export.adapter import AdapterMatrix, ExportFormat, adapters_for, deltas_of, diffusers_reaches
from engine.export.keys import canonical_path

FC2 = "encoder.layers.1.mlp.fc2"
WO = "encoder.block.1.layer.1.DenseReluDense.wo"


def _delta(seed: int, rank: int, component: str = "text_encoder", module: str = FC2) -> EditDelta:
    g = torch.Generator().manual_seed(seed)
    return EditDelta(updates=[MatrixUpdate(component, module, torch.randn(8, rank, generator=g),
                                           torch.randn(16, rank, generator=g), 1)])


def test_stacked_adapter_sums_the_edits_and_splits_back_exactly():
    edits = [(1, _delta(1, 1)), (2, _delta(2, 3)), (3, _delta(3, 1, "text_encoder_2", WO))]
    (stacked,) = adapters_for(edits, per_edit=False)
    fc2 = next(m for m in stacked.matrices if m.module == FC2)
    assert fc2.rank == 4 and [(c.seq, c.start, c.stop) for c in fc2.columns] == [(1, 0, 1), (2, 1, 4)]
    total = edits[0][1].updates[0].matrix() + edits[1][1].updates[0].matrix()
    assert torch.allclose(fc2.up @ fc2.down, total, atol=1e-6)
    assert fc2.up.dtype == fc2.down.dtype == torch.float32
    back = deltas_of([stacked], [1, 2, 3])
    for seq, d in edits:
        (a,), (b,) = back[seq].updates, d.updates
        assert (a.component, a.module) == (b.component, b.module)
        assert torch.equal(a.left, b.left) and torch.equal(a.right, b.right)


def test_per_edit_adapters_are_named_by_seq_and_a_batch_is_one_adapter_of_its_rank():
    adapters = adapters_for([(4, _delta(1, 1)), (7, _delta(2, 5))], per_edit=True)
    assert [a.name for a in adapters] == ["edit-4", "edit-7"]
    assert [m.rank for a in adapters for m in a.matrices] == [1, 5]


def test_diffusers_reaches_clip_projections_and_the_unet_not_t5():
    def m(component, module):
        return AdapterMatrix(component, module, torch.zeros(1, 1), torch.zeros(1, 1))

    loadable = ("unet", "text_encoder", "text_encoder_2")
    assert diffusers_reaches(m("text_encoder", FC2), loadable)
    assert diffusers_reaches(m("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v"), loadable)
    assert not diffusers_reaches(m("text_encoder_2", WO), loadable)
    assert not diffusers_reaches(m("text_encoder_2", "layers.3.mlp.down_proj"), loadable)
    assert not diffusers_reaches(m("text_encoder_3", FC2), loadable)


def test_format_names_and_clip_paths():
    from engine.errors import EngineError

    assert ExportFormat.parse("LoRA") is ExportFormat.LORA and not ExportFormat.DELTAS.is_adapter
    with pytest.raises(EngineError, match="unknown --format 'onnx'"):
        ExportFormat.parse("onnx")
    assert canonical_path(FC2) == "text_model." + FC2
    assert canonical_path("text_model." + FC2) == "text_model." + FC2 and canonical_path(WO) == WO
