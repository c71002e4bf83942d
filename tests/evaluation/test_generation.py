"""Batch-invariant generation on the tiny pipeline (latent output)."""

from __future__ import annotations

import pytest
import torch

from engine.evaluation.config import EvalConfigError, GenerationConfig
from engine.evaluation.generation import WorkItem, generate, initial_latents, prepare_pipeline, resolution

PROMPTS = ["a cat", "a dog on a hill", "a red car", "canada's prime minister", "a bowl of bananas"]


@pytest.fixture
def pipe(tiny_model):
    prepare_pipeline(tiny_model.pipeline, "cpu")
    return tiny_model.pipeline


def test_initial_noise_depends_only_on_the_seed(pipe):
    lat = initial_latents(pipe, [3, 7, 3], 64, 64)
    assert lat.shape == (3, 4, 8, 8)
    assert torch.equal(lat[0], lat[2])
    assert torch.equal(lat[1], torch.randn((4, 8, 8), generator=torch.Generator("cpu").manual_seed(7)))


def test_batch_size_does_not_change_images(pipe):
    items = [WorkItem(p, s) for p, s in zip(PROMPTS, [0, 1, 2, 3, 4])]
    cfg = GenerationConfig(steps=3, output_type="latent", batch_size=1)
    one = torch.stack(generate(pipe, items, cfg))
    four = torch.stack(generate(pipe, items, GenerationConfig(steps=3, output_type="latent", batch_size=4)))
    assert one.shape == (5, 4, 8, 8)
    # same noise, same prompt: equal up to CPU GEMM blocking (batch 1 vs 4 kernels), far below seed effects
    assert (one - four).abs().max().item() < 1e-4
    other_seed = torch.stack(generate(pipe, [WorkItem(PROMPTS[0], 99)], cfg))
    assert (other_seed[0] - one[0]).abs().max().item() > 0.1
    # batches of identical composition are bit-identical
    again = torch.stack(generate(pipe, items, GenerationConfig(steps=3, output_type="latent", batch_size=4)))
    assert torch.equal(again, four)


def test_defaults_and_resolution(pipe):
    cfg = GenerationConfig()
    assert (cfg.steps, cfg.guidance) == (50, 7.5)
    assert resolution(pipe, cfg) == (64, 64)  # tiny pipeline default: sample 8 x vae scale 8
    assert resolution(pipe, GenerationConfig(height=32, width=48)) == (32, 48)
    with pytest.raises(EvalConfigError):
        GenerationConfig(height=30)


def test_text_encoder_weights_reach_the_images(tiny_model, pipe):
    from engine.base_weights import fc2_module

    items = [WorkItem(PROMPTS[1], 5)]
    cfg = GenerationConfig(steps=2, output_type="latent")
    before = generate(pipe, items, cfg)[0]
    with torch.no_grad():
        fc2_module(tiny_model, 3).weight.mul_(3.0)
    after = generate(pipe, items, cfg)[0]
    assert (after - before).abs().max().item() > 1e-4
