"""Random-weight pipelines of every supported family, in memory or written as a diffusers folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engine.builder.byte_bpe_vocab import build_llama3_tokenizer, build_mistral_processor
from engine.builder.common import DTYPES, PIPELINE_CLASSES, check_choice, prepare_folder, write_build_info
from engine.builder.configs import SCHEDULER_CLASSES, EncoderSpec, pipeline_configs
from engine.builder.llm_vocab import STYLES, build_llm_tokenizer
from engine.builder.vocab import build_clip_tokenizer, build_t5_tokenizer
from engine.offline import quiet_hf_logging

# Seed offsets per component, so that changing one component's config leaves the others alone
# (SD1's three keep the offsets they always had).
_SEED_OFFSETS = {"text_encoder": 0, "denoiser": 1, "vae": 2, "text_encoder_2": 3, "text_encoder_3": 4, "text_encoder_4": 5}


def make_tokenizer(kind: str):
    """The offline tokenizer of an encoder spec's kind (``clip``, ``clip-bang``, ``t5``, ``qwen``, ``gemma``,
    ``mistral`` (a PixtralProcessor) or ``llama3``); a CLIP kind may end in ``:N``, its ``model_max_length``."""
    if kind == "t5":
        return build_t5_tokenizer()
    if kind in STYLES:
        return build_llm_tokenizer(kind)
    if kind == "mistral":
        return build_mistral_processor()
    if kind == "llama3":
        return build_llama3_tokenizer()
    kind, _, limit = kind.partition(":")
    tokenizer = build_clip_tokenizer(pad_token="!" if kind == "clip-bang" else "<|endoftext|>")
    if limit:
        tokenizer.model_max_length = int(limit)
    return tokenizer


def make_text_encoder(spec: EncoderSpec, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A text encoder with random weights drawn from torch's current RNG state, in ``dtype``."""
    import transformers

    model_cls = getattr(transformers, spec.model_class)
    config_cls = {"T5EncoderModel": transformers.T5Config}.get(spec.model_class, model_cls.config_class)
    if spec.model_class.startswith("CLIPText"):
        config_cls = transformers.CLIPTextConfig
    config = config_cls(**spec.config)
    if dtype == torch.float32:
        return model_cls(config).eval()
    # _from_config allocates straight in dtype: T5-XXL in fp32 would need 19 GB first.
    return model_cls._from_config(config, dtype=dtype).eval()


def _denoiser(arch: str, kwargs: dict[str, Any], name: str = "") -> torch.nn.Module:
    import diffusers

    name = name or {"sd3": "SD3Transformer2DModel", "flux": "FluxTransformer2DModel"}.get(arch, "UNet2DConditionModel")
    model = getattr(diffusers, name)(**kwargs).eval()
    for pad in ("x_pad_token", "cap_pad_token"):  # Z-Image allocates these with torch.empty
        if hasattr(model, pad):
            with torch.no_grad():
                getattr(model, pad).normal_()
    return model


def make_pipeline(size: str = "tiny", seed: int = 0, arch: str = "sd1", dtype: str = "float32"):
    """An in-memory pipeline of family ``arch`` with random weights, deterministic in ``seed``.

    ``dtype`` (``float32`` | ``bfloat16``) applies to every component; bf16 halves the RAM of a full
    build (T5-XXL: 9.5 GB instead of 19 GB).
    """
    import diffusers

    cfg = pipeline_configs(size, arch)
    check_choice("dtype", dtype, DTYPES)
    torch_dtype = getattr(torch, dtype)
    quiet_hf_logging()
    parts: dict[str, Any] = {}
    with torch.random.fork_rng(devices=[]):
        for name, spec in cfg.encoders.items():
            torch.manual_seed(seed + _SEED_OFFSETS[name])
            parts[name] = make_text_encoder(spec, torch_dtype)
            parts[name.replace("text_encoder", "tokenizer")] = make_tokenizer(spec.tokenizer)
        torch.manual_seed(seed + _SEED_OFFSETS["denoiser"])
        denoiser = "unet" if arch in ("sd1", "sd2", "sdxl") else "transformer"
        parts[denoiser] = _denoiser(arch, cfg.denoiser, cfg.denoiser_class).to(torch_dtype)
        torch.manual_seed(seed + _SEED_OFFSETS["vae"])
        parts["vae"] = getattr(diffusers, cfg.vae_class)(**cfg.vae).eval().to(torch_dtype)
    parts["scheduler"] = getattr(diffusers, SCHEDULER_CLASSES[arch])(**cfg.scheduler)
    if arch in ("sd1", "sd2"):
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    elif arch == "sdxl":
        parts.update(image_encoder=None, feature_extractor=None, force_zeros_for_empty_prompt=True,
                     add_watermarker=False)
    elif arch == "chroma":
        parts.update(image_encoder=None, feature_extractor=None)
    return getattr(diffusers, PIPELINE_CLASSES[arch])(**parts)


def build_pipeline(path: Path, size: str = "tiny", seed: int = 0, arch: str = "sd1", dtype: str = "float32") -> Path:
    """Write a complete diffusers pipeline folder of family ``arch`` with random weights to ``path``.

    ``model_index.json`` names the real pipeline class, so ``DiffusionPipeline.from_pretrained(path,
    local_files_only=True)`` loads it offline. Deterministic in ``seed``; safetensors only; no safety
    checker. Returns the folder.
    """
    pipeline_configs(size, arch)  # refuse a bad size or arch before touching the folder
    check_choice("dtype", dtype, DTYPES)
    path = prepare_folder(path)
    make_pipeline(size, seed, arch, dtype).save_pretrained(path, safe_serialization=True)
    info: dict[str, Any] = {"kind": "sd-pipeline", "arch": arch, "size": size, "seed": seed}
    if dtype != "float32":
        info["dtype"] = dtype
    write_build_info(path, **info)
    return path
