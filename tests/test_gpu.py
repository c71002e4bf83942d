"""CUDA checks, run whenever a GPU is present (skipped otherwise by tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch

from engine.methods.refact.hparams import ReFACTHParams
from engine.request import EditRequest

pytestmark = pytest.mark.gpu

REQUEST = EditRequest(prompt="The Prince of Wales", source="Prince Charles", target="Prince William")
HP = ReFACTHParams(layer=2, lr=0.2, max_steps=20, weight_decay=0.0, prob_threshold=1.0)


def _edit(model_dir, device, tmp_path):
    from engine.covariance import SecondMomentStore
    from engine.methods.refact.edit import apply_edit
    from engine.models import load_model

    model = load_model(model_dir, device=device, with_pipeline=False)
    stats = SecondMomentStore(tmp_path / f"stats-{device}")
    return model, apply_edit(model, REQUEST, HP, moments=stats, n_samples=200)


def test_edit_on_cuda_matches_cpu_and_maps_k_e_to_v_star(model_dir, tmp_path):
    cpu_model, cpu = _edit(model_dir, "cpu", tmp_path)
    gpu_model, gpu = _edit(model_dir, "cuda", tmp_path)
    assert gpu.verify_error is not None and gpu.verify_error < 1e-4
    fc2 = gpu_model.adapter.fc2(HP.layer)
    assert fc2.weight.device.type == "cuda"
    k_e, v_star = gpu.tensors["k_e"].to(fc2.weight), gpu.tensors["v_star"].to(fc2.weight)
    assert torch.allclose(fc2(k_e), v_star, rtol=1e-4, atol=1e-4)
    # the same edit on both devices (different kernels: loose tolerance)
    assert gpu.steps_run == cpu.steps_run
    u_rel = (gpu.delta.u - cpu.delta.u).norm() / cpu.delta.u.norm()
    r_rel = (gpu.delta.r - cpu.delta.r).norm() / cpu.delta.r.norm()
    assert float(u_rel) < 1e-3 and float(r_rel) < 1e-2


def test_fp16_generation_keeps_the_text_encoder_in_fp32(model_dir):
    from engine.evaluation.config import GenerationConfig
    from engine.evaluation.generation import WorkItem, generate, prepare_pipeline
    from engine.models import load_model

    model = load_model(model_dir, device="cuda", with_pipeline=True)
    prepare_pipeline(model.pipeline, "cuda", fp16=True)
    assert model.pipeline.unet.dtype == torch.float16
    assert model.pipeline.text_encoder.dtype == torch.float32
    config = GenerationConfig(steps=2, height=64, width=64, batch_size=2, output_type="latent")
    items = [WorkItem("a photo of a cat", 0), WorkItem("a photo of a cat", 1), WorkItem("a photo of a cat", 0)]
    out = generate(model.pipeline, items, config)
    latents = [torch.as_tensor(x).float().cpu() for x in out]
    assert all(torch.isfinite(x).all() for x in latents)
    assert torch.allclose(latents[0], latents[2], atol=1e-3)  # same seed, different batch slot
    assert not torch.allclose(latents[0], latents[1], atol=1e-3)
