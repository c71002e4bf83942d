"""Batched, batch-invariant image generation with the current pipeline.

Each image gets its own CPU ``torch.Generator(seed)`` for its initial latents, so an image does not
depend on which prompts share its batch or on the process that renders it (B13 in the reference
notes). Prompt embeddings come from the pipeline's fp32 text encoder (the one the edit changed);
on CUDA the UNet and VAE run in fp16. The pipeline's own scheduler is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from engine.evaluation.config import GenerationConfig


@dataclass(frozen=True)
class WorkItem:
    """One image to render: a prompt, its seed, and a free-form tag the caller uses to route it."""

    prompt: str
    seed: int
    tag: str = ""


def batched(items: Sequence[Any], batch_size: int) -> list[list[Any]]:
    """Consecutive chunks of ``batch_size`` (the last may be shorter)."""
    return [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]


def resolution(pipeline, config: GenerationConfig) -> tuple[int, int]:
    """(height, width) in pixels: the config's, else the pipeline default (unet sample x vae scale)."""
    default = int(pipeline.unet.config.sample_size) * int(pipeline.vae_scale_factor)
    return (config.height or default, config.width or default)


def initial_latents(pipeline, seeds: Sequence[int], height: int, width: int) -> torch.Tensor:
    """[B, C, h, w] float32 CPU noise, one generator per seed."""
    shape = (int(pipeline.unet.config.in_channels), height // pipeline.vae_scale_factor, width // pipeline.vae_scale_factor)
    return torch.stack([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds])


def prepare_pipeline(pipeline, device: torch.device | str, fp16: bool = True) -> None:
    """Move to ``device``; on CUDA cast UNet and VAE to fp16 (text encoder stays fp32); no safety checker."""
    device = torch.device(device)
    pipeline.to(device)
    if device.type == "cuda" and fp16:
        pipeline.unet.to(dtype=torch.float16)
        pipeline.vae.to(dtype=torch.float16)
    pipeline.text_encoder.to(dtype=torch.float32)
    if getattr(pipeline, "safety_checker", None) is not None:
        pipeline.safety_checker = None
    pipeline.set_progress_bar_config(disable=True)


def _embeds(pipeline, prompts: list[str], device: torch.device, cfg: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    with torch.no_grad():
        pos, neg = pipeline.encode_prompt(prompts, device, 1, cfg)
    dtype = pipeline.unet.dtype
    return pos.to(dtype), (neg.to(dtype) if neg is not None else None)


def generate_batch(pipeline, items: Sequence[WorkItem], config: GenerationConfig) -> list[Any]:
    """Render one batch; returns one output per item (PIL image, or a latent/array slice)."""
    device = pipeline.unet.device
    height, width = resolution(pipeline, config)
    cfg = config.guidance > 1.0
    pos, neg = _embeds(pipeline, [it.prompt for it in items], device, cfg)
    latents = initial_latents(pipeline, [it.seed for it in items], height, width).to(device, pipeline.unet.dtype)
    out = pipeline(
        prompt_embeds=pos,
        negative_prompt_embeds=neg,
        latents=latents,
        num_inference_steps=config.steps,
        guidance_scale=config.guidance,
        height=height,
        width=width,
        output_type=config.output_type,
    ).images
    if config.output_type in ("latent", "pt"):
        return [t.detach().float().cpu() for t in out]
    return list(out)


def generate(pipeline, items: Sequence[WorkItem], config: GenerationConfig,
             on_batch: Callable[[int, int], None] | None = None) -> list[Any]:
    """Render ``items`` in batches of ``config.batch_size``; ``on_batch(done, total)`` after each."""
    results: list[Any] = []
    for chunk in batched(items, config.batch_size):
        results.extend(generate_batch(pipeline, chunk, config))
        if on_batch is not None:
            on_batch(len(results), len(items))
    return results
