"""Batched, batch-invariant image generation with the current pipeline, for every family.

Each image gets its own CPU ``torch.Generator(seed)`` for its initial latents, so an image does not
depend on which prompts share its batch or on the process that renders it (B13 in the reference
notes). Prompt embeddings come from the pipeline's own ``encode_prompt`` over its fp32 text
encoders (the ones an edit changes); on CUDA the denoiser and VAE run in fp16 (UNet families) or
bf16 (SD3 / FLUX transformers). The pipeline's own scheduler is used.

Families (``pipeline_kind``): ``sd`` (SD1/SD2: one embedding tensor), ``sdxl`` (``encode_prompt``
returns sequence + pooled embeddings, positive and negative), ``sd3`` (the same four tensors, T5 in
the sequence) and ``flux`` (T5 sequence + CLIP pooled; no classifier-free guidance, the latents are
packed 2x2 into tokens). ``clip_skip`` is never passed (its SD path breaks under transformers 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from engine.evaluation.config import GenerationConfig

# diffusers pipeline class -> how it is driven (anything else with a .unet is driven like SD1)
PIPELINE_KINDS = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
}


@dataclass(frozen=True)
class WorkItem:
    """One image to render: a prompt, its seed, and a free-form tag the caller uses to route it."""

    prompt: str
    seed: int
    tag: str = ""


def batched(items: Sequence[Any], batch_size: int) -> list[list[Any]]:
    """Consecutive chunks of ``batch_size`` (the last may be shorter)."""
    return [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]


def pipeline_kind(pipeline) -> str:
    """``sd``, ``sdxl``, ``sd3`` or ``flux`` for a diffusers pipeline (by class, then by parts)."""
    for cls in type(pipeline).__mro__:
        if cls.__name__ in PIPELINE_KINDS:
            return PIPELINE_KINDS[cls.__name__]
    return "sd" if getattr(pipeline, "unet", None) is not None else "flux"


def denoiser(pipeline) -> torch.nn.Module:
    """The pipeline's UNet, or its transformer (SD3, FLUX)."""
    unet = getattr(pipeline, "unet", None)
    return unet if unet is not None else pipeline.transformer


def text_encoders(pipeline) -> list[torch.nn.Module]:
    """Every text encoder the pipeline has (``text_encoder``, ``text_encoder_2``, ``text_encoder_3``)."""
    names = ("text_encoder", "text_encoder_2", "text_encoder_3")
    return [m for m in (getattr(pipeline, n, None) for n in names) if m is not None]


def resolution(pipeline, config: GenerationConfig) -> tuple[int, int]:
    """(height, width) in pixels: the config's, else the pipeline default (sample size x vae scale)."""
    sample = getattr(denoiser(pipeline).config, "sample_size", None) or getattr(pipeline, "default_sample_size", 64)
    default = int(sample) * int(pipeline.vae_scale_factor)
    return (config.height or default, config.width or default)


def _latent_channels(pipeline) -> int:
    channels = int(denoiser(pipeline).config.in_channels)
    return channels // 4 if pipeline_kind(pipeline) == "flux" else channels


def latent_shape(pipeline, height: int, width: int) -> tuple[int, int, int]:
    """(C, h, w) of one image's unpacked initial noise."""
    scale = int(pipeline.vae_scale_factor)
    if pipeline_kind(pipeline) == "flux":  # packing needs an even latent grid
        return (_latent_channels(pipeline), 2 * (height // (scale * 2)), 2 * (width // (scale * 2)))
    return (_latent_channels(pipeline), height // scale, width // scale)


def initial_latents(pipeline, seeds: Sequence[int], height: int, width: int) -> torch.Tensor:
    """float32 CPU noise, one generator per seed: [B, C, h, w], or FLUX's packed [B, h*w/4, 4C]."""
    shape = latent_shape(pipeline, height, width)
    noise = torch.stack([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds])
    if pipeline_kind(pipeline) == "flux":
        noise = pipeline._pack_latents(noise, len(seeds), *shape)
    return noise


def prepare_pipeline(pipeline, device: torch.device | str, fp16: bool = True) -> None:
    """Move to ``device``; on CUDA cast denoiser and VAE to half precision (text encoders stay fp32)."""
    device = torch.device(device)
    pipeline.to(device)
    if device.type == "cuda" and fp16:
        half = torch.bfloat16 if pipeline_kind(pipeline) in ("sd3", "flux") else torch.float16
        denoiser(pipeline).to(dtype=half)
        pipeline.vae.to(dtype=half)
    for encoder in text_encoders(pipeline):
        encoder.to(dtype=torch.float32)
    if getattr(pipeline, "safety_checker", None) is not None:
        pipeline.safety_checker = None
    pipeline.set_progress_bar_config(disable=True)


def prompt_inputs(pipeline, prompts: list[str], cfg: bool) -> dict[str, torch.Tensor]:
    """The pipeline's own ``encode_prompt`` output as ``__call__`` keyword arguments, cast to the
    denoiser's dtype (computed by the fp32 text encoders)."""
    kind = pipeline_kind(pipeline)
    net = denoiser(pipeline)
    device = net.device
    with torch.no_grad():
        if kind == "sd":
            pos, neg = pipeline.encode_prompt(prompts, device, 1, cfg)
            out = {"prompt_embeds": pos, "negative_prompt_embeds": neg}
        elif kind == "sdxl":
            pos, neg, pooled, neg_pooled = pipeline.encode_prompt(
                prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=cfg)
            out = {"prompt_embeds": pos, "negative_prompt_embeds": neg, "pooled_prompt_embeds": pooled,
                   "negative_pooled_prompt_embeds": neg_pooled}
        elif kind == "sd3":
            pos, neg, pooled, neg_pooled = pipeline.encode_prompt(
                prompts, None, None, device=device, num_images_per_prompt=1, do_classifier_free_guidance=cfg)
            out = {"prompt_embeds": pos, "negative_prompt_embeds": neg, "pooled_prompt_embeds": pooled,
                   "negative_pooled_prompt_embeds": neg_pooled}
        else:
            pos, pooled, _ids = pipeline.encode_prompt(prompts, None, device=device, num_images_per_prompt=1)
            out = {"prompt_embeds": pos, "pooled_prompt_embeds": pooled}
    return {k: v.to(net.dtype) for k, v in out.items() if v is not None}


def generate_batch(pipeline, items: Sequence[WorkItem], config: GenerationConfig) -> list[Any]:
    """Render one batch; returns one output per item (PIL image, or a latent/array slice)."""
    net = denoiser(pipeline)
    height, width = resolution(pipeline, config)
    kind = pipeline_kind(pipeline)
    # FLUX has no negative branch: guidance only feeds a guidance-distilled transformer's embedding.
    cfg = config.guidance > 1.0 and kind != "flux"
    inputs = prompt_inputs(pipeline, [it.prompt for it in items], cfg)
    latents = initial_latents(pipeline, [it.seed for it in items], height, width).to(net.device, net.dtype)
    out = pipeline(
        **inputs,
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
