"""Generation on tiny SD2 / SDXL / SD3 / FLUX pipelines: 2 steps at 64x64, one CPU generator per image,
every text encoder reaches the images, and base weights of every slot are swapped in exactly."""

from __future__ import annotations

import pytest
import torch

from engine.evaluation.config import GenerationConfig
from engine.evaluation.generation import (
    WorkItem,
    denoiser,
    generate,
    initial_latents,
    pipeline_kind,
    prepare_pipeline,
    text_encoders,
)

ARCHS = ("sd1", "sd2", "sdxl", "sd3", "flux")
N_ENCODERS = {"sd1": 1, "sd2": 1, "sdxl": 2, "sd3": 3, "flux": 2}
CFG = GenerationConfig(steps=2, height=64, width=64, output_type="pt", batch_size=2)


def _editable(encoder) -> torch.nn.Linear:
    """A middle-layer MLP output matrix of a CLIP or T5 encoder."""
    names = [n for n, _ in encoder.named_modules() if n.endswith("mlp.fc2") or n.endswith("DenseReluDense.wo")]
    return encoder.get_submodule(names[len(names) // 2 - 1])


@pytest.mark.parametrize("arch", ARCHS)
def test_two_step_generation_is_per_image_seeded_and_reads_every_encoder(arch, pipeline_for):
    pipe = pipeline_for(arch)
    prepare_pipeline(pipe, "cpu")
    assert pipeline_kind(pipe) == {"sd1": "sd", "sd2": "sd"}.get(arch, arch)
    assert len(text_encoders(pipe)) == N_ENCODERS[arch]
    items = [WorkItem("a photo of a cat", 0), WorkItem("a red car on a street", 1)]
    pair = generate(pipe, items, CFG)
    alone = generate(pipe, items[1:], CFG)
    assert pair[0].shape == (3, 64, 64) and all(torch.isfinite(x).all() for x in pair)
    # one CPU generator per image: batch company changes nothing beyond GEMM rounding
    assert (pair[1] - alone[0]).abs().max().item() < 1e-4
    noise = initial_latents(pipe, [1], 64, 64)
    assert noise.shape[0] == 1 and noise.ndim == (3 if arch == "flux" else 4)
    if arch == "flux":  # packed 2x2 tokens of 16 latent channels
        assert noise.shape[1:] == (16, 64)
    # every text encoder the pipeline has reaches the images
    for encoder in text_encoders(pipe):
        linear = _editable(encoder)
        saved = linear.weight.detach().clone()
        with torch.no_grad():
            linear.weight.mul_(4.0)
        try:
            changed = generate(pipe, items[1:], CFG)[0]
        finally:
            with torch.no_grad():
                linear.weight.copy_(saved)
        assert (changed - alone[0]).abs().max().item() > 1e-3, type(encoder).__name__
    assert torch.equal(generate(pipe, items[1:], CFG)[0], alone[0])


def test_slot_weights_swap_in_the_base_of_every_slot_bit_exactly(pipeline_dir_for):
    from engine.base_weights import base_weights_of, slot_weights
    from engine.models import load_model

    model = load_model(pipeline_dir_for("sdxl"), device="cpu")
    prepare_pipeline(model.pipeline, "cpu")
    items = [WorkItem("a photo of a cat", 3)]
    base_image = generate(model.pipeline, items, CFG)[0]
    base = base_weights_of(model)
    assert set(base) == {"text_encoder", "text_encoder_2"}
    with torch.no_grad():
        for slot in model.slots:
            next(iter(slot.fc2_modules().values())).weight.add_(0.5)
    edited = [s.snapshot_fc2() for s in model.slots]
    edited_image = generate(model.pipeline, items, CFG)[0]
    assert (edited_image - base_image).abs().max().item() > 1e-3
    with slot_weights(model, base):
        assert torch.equal(generate(model.pipeline, items, CFG)[0], base_image)
    for slot, snap in zip(model.slots, edited):
        assert all(torch.equal(w, snap[k]) for k, w in slot.snapshot_fc2().items())
    assert denoiser(model.pipeline) is model.pipeline.unet
