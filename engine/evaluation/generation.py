"""Batched, batch-invariant image generation with the current pipeline, for every family.

One path for every pipeline class; what differs between classes is a row of
``engine.evaluation.pipeline_drives.DRIVES``. Prompt embeddings come from the pipeline's own
``encode_prompt`` over its fp32 text encoders (the ones an edit changes) and go to the pipeline's own
``__call__`` precomputed, cast to the denoiser's dtype; on CUDA the denoiser and VAE run in the row's
half precision (fp16 for UNets, bf16 for transformers). The pipeline's own scheduler is used.

Each image gets its own CPU ``torch.Generator(seed)``, so an image does not depend on which prompts
share its batch or on the process that renders it (B13 in the reference notes). SD1/SD2, SDXL, SD3 and
FLUX.1 get fp32 noise drawn here (FLUX's packed 2x2 into tokens); every other family draws its noise in
its own ``prepare_latents`` from the list of per-image generators. ``clip_skip`` is never passed (its
SD path breaks under transformers 5).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from engine.evaluation.config import GenerationConfig
from engine.evaluation.pipeline_drives import Negatives, Noise, PipelineDrive, drive_of


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
    """The family name of a diffusers pipeline's row (``sd``, ``sdxl``, ``sd3``, ``flux``, ``z-image``, ...)."""
    return drive_of(pipeline).kind


def denoiser(pipeline) -> torch.nn.Module:
    """The pipeline's UNet, or its transformer."""
    unet = getattr(pipeline, "unet", None)
    return unet if unet is not None else pipeline.transformer


def text_encoders(pipeline) -> list[torch.nn.Module]:
    """Every text encoder the pipeline has (``text_encoder``, ``text_encoder_2``, ...), in name order."""
    parts = getattr(pipeline, "components", {})
    names = sorted((n for n in parts if n.startswith("text_encoder")), key=lambda n: (len(n), n))
    return [m for m in (parts[n] for n in names) if isinstance(m, torch.nn.Module)]


def resolution(pipeline, config: GenerationConfig) -> tuple[int, int]:
    """(height, width) in pixels: the config's, else the pipeline default (sample size x vae scale)."""
    sample = getattr(denoiser(pipeline).config, "sample_size", None) or getattr(pipeline, "default_sample_size", 64)
    default = int(sample) * int(pipeline.vae_scale_factor)
    return (config.height or default, config.width or default)


def latent_shape(pipeline, height: int, width: int) -> tuple[int, int, int]:
    """(C, h, w) of one image's unpacked initial noise, for rows whose noise is drawn here."""
    scale = int(pipeline.vae_scale_factor)
    channels = int(denoiser(pipeline).config.in_channels)
    if drive_of(pipeline).noise == Noise.PACKED:  # packing needs an even latent grid
        return (channels // 4, 2 * (height // (scale * 2)), 2 * (width // (scale * 2)))
    return (channels, height // scale, width // scale)


def initial_latents(pipeline, seeds: Sequence[int], height: int, width: int) -> torch.Tensor | None:
    """float32 CPU noise, one generator per seed: [B, C, h, w], or FLUX's packed [B, h*w/4, 4C]; None
    for a family whose pipeline draws its own noise (from ``generators(seeds)``)."""
    noise_kind = drive_of(pipeline).noise
    if noise_kind == Noise.PIPELINE:
        return None
    shape = latent_shape(pipeline, height, width)
    noise = torch.stack([torch.randn(shape, generator=g) for g in generators(seeds)])
    if noise_kind == Noise.PACKED:
        noise = pipeline._pack_latents(noise, len(seeds), *shape)
    return noise


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One fresh CPU generator per seed."""
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def prepare_pipeline(pipeline, device: torch.device | str, fp16: bool = True) -> None:
    """Move to ``device``; on CUDA cast denoiser and VAE to the row's half precision (text encoders stay fp32)."""
    device = torch.device(device)
    pipeline.to(device)
    if device.type == "cuda" and fp16:
        half = getattr(torch, drive_of(pipeline).half)
        denoiser(pipeline).to(dtype=half)
        pipeline.vae.to(dtype=half)
    for encoder in text_encoders(pipeline):
        encoder.to(dtype=torch.float32)
    if getattr(pipeline, "safety_checker", None) is not None:
        pipeline.safety_checker = None
    pipeline.set_progress_bar_config(disable=True)


def _encode(pipeline, drive: PipelineDrive, prompts: list[str], cfg: bool, device: torch.device) -> dict[str, Any]:
    """``encode_prompt(prompts)`` keyed by the row's ``__call__`` keywords. Arguments the signature
    takes are filled by name; other required ones (SD3's ``prompt_2``/``prompt_3``) are None, which
    means "the same prompt"."""
    kwargs: dict[str, Any] = {}
    params = list(inspect.signature(pipeline.encode_prompt).parameters.values())[1:]
    given = {"device": device, "num_images_per_prompt": 1, "do_classifier_free_guidance": cfg}
    for p in params:
        if p.name in given:
            kwargs[p.name] = given[p.name]
        elif p.default is inspect.Parameter.empty and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
            kwargs[p.name] = None
    out = pipeline.encode_prompt(prompts, **kwargs)
    out = out if isinstance(out, tuple) else (out,)
    if len(out) != len(drive.outputs):
        from engine.evaluation.errors import EvaluationError

        raise EvaluationError(f"{type(pipeline).__name__}.encode_prompt returned {len(out)} parts but its row in "
                              f"engine/evaluation/pipeline_drives.py names {len(drive.outputs)}; fix the row")
    return {name: value for name, value in zip(drive.outputs, out) if name is not None}


def _to(value: Any, dtype: torch.dtype) -> Any:
    """Floating tensors (or lists of them, Z-Image) cast to ``dtype``; masks and ids left as they are."""
    if isinstance(value, (list, tuple)):
        return [_to(v, dtype) for v in value]
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    return value


def prompt_inputs(pipeline, prompts: list[str], cfg: bool) -> dict[str, Any]:
    """The pipeline's own ``encode_prompt`` output as ``__call__`` keyword arguments, floating parts cast
    to the denoiser's dtype (computed by the fp32 text encoders); the negative branch only when ``cfg``."""
    drive = drive_of(pipeline)
    net = denoiser(pipeline)
    with torch.no_grad():
        out = _encode(pipeline, drive, prompts, cfg and drive.negatives == Negatives.ENCODE, net.device)
        if cfg and drive.negatives == Negatives.EMPTY:
            empty = _encode(pipeline, drive, [""] * len(prompts), False, net.device)
            out.update({f"negative_{k}": v for k, v in empty.items()})
    # None and empty lists (Z-Image's negatives without guidance) are "not given"
    return {k: _to(v, net.dtype) for k, v in out.items() if v is not None and not (isinstance(v, list) and not v)}


def generate_batch(pipeline, items: Sequence[WorkItem], config: GenerationConfig) -> list[Any]:
    """Render one batch; returns one output per item (PIL image, or a latent/array slice)."""
    drive = drive_of(pipeline)
    net = denoiser(pipeline)
    height, width = resolution(pipeline, config)
    cfg = config.guidance > drive.cfg_above and drive.negatives != Negatives.NONE
    inputs = prompt_inputs(pipeline, [it.prompt for it in items], cfg)
    seeds = [it.seed for it in items]
    latents = initial_latents(pipeline, seeds, height, width)
    if latents is not None:
        inputs["latents"] = latents.to(net.device, net.dtype)
    out = pipeline(
        **inputs,
        **drive.call_kwargs,
        **{drive.guidance: config.guidance},
        generator=generators(seeds),
        num_inference_steps=config.steps,
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
