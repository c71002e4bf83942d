"""How image generation drives each diffusers pipeline class: one table row per class.

Generation is one path for every family (``engine.evaluation.generation``): the pipeline's own
``encode_prompt`` over its fp32 text encoders, then the pipeline's own ``__call__`` with those
embeddings precomputed and one CPU generator per image. A row says only what differs between
pipeline classes: which ``__call__`` keyword receives each part of ``encode_prompt``'s output, where
the negative branch comes from, who draws the initial noise, which keyword takes the guidance scale,
and any fixed keywords. A new family is one row here (checked against the class's signatures by
``tests/evaluation/test_pipeline_drives.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from engine.evaluation.errors import EvaluationError


class Negatives(StrEnum):
    """Where the classifier-free-guidance branch comes from."""

    ENCODE = "encode"  # encode_prompt(do_classifier_free_guidance=True) returns it with the positives
    EMPTY = "empty"    # encode_prompt run again on "" per image; its outputs are passed as negative_<name>
    NONE = "none"      # no negative branch (guidance-distilled denoisers): guidance only feeds the denoiser


class Noise(StrEnum):
    """Who draws an image's initial noise (always from that image's own CPU generator)."""

    LATENTS = "latents"    # drawn here in fp32, [C, h, w] per image, passed as latents= (SD1/SD2, SDXL, SD3)
    PACKED = "packed"      # as LATENTS, then packed 2x2 into tokens (FLUX.1)
    PIPELINE = "pipeline"  # the pipeline's own prepare_latents, from a list of per-image generators


@dataclass(frozen=True)
class PipelineDrive:
    """One pipeline class's row (see module doc)."""

    kind: str                                   # short family name (reports, tests)
    outputs: tuple[str | None, ...]             # __call__ keyword of each encode_prompt output; None = not passed
    negatives: Negatives = Negatives.ENCODE
    noise: Noise = Noise.PIPELINE
    guidance: str = "guidance_scale"            # the __call__ keyword GenerationConfig.guidance goes to
    cfg_above: float = 1.0                      # the pipeline runs its negative branch when guidance > this
    half: str = "bfloat16"                      # denoiser/VAE dtype on CUDA (text encoders stay fp32)
    call: tuple[tuple[str, Any], ...] = ()      # fixed extra __call__ keywords

    @property
    def call_kwargs(self) -> dict[str, Any]:
        return dict(self.call)


_SD = PipelineDrive("sd", ("prompt_embeds", "negative_prompt_embeds"), noise=Noise.LATENTS, half="float16")
_FOUR = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
_MASKED = ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask")
# 64x64 on a tiny build must stay 64x64 (resolution binning would snap it to the nearest trained size);
# negative_prompt defaults to "" there, which __call__ refuses next to negative_prompt_embeds.
_PIXART = (("use_resolution_binning", False), ("negative_prompt", None))

DRIVES: dict[str, PipelineDrive] = {
    "StableDiffusionPipeline": _SD,
    "StableDiffusionXLPipeline": PipelineDrive("sdxl", _FOUR, noise=Noise.LATENTS, half="float16"),
    "StableDiffusion3Pipeline": PipelineDrive("sd3", _FOUR, noise=Noise.LATENTS),
    "FluxPipeline": PipelineDrive("flux", ("prompt_embeds", "pooled_prompt_embeds", None),
                                  negatives=Negatives.NONE, noise=Noise.PACKED),
    # Z-Image guides as pos + g (pos - neg): any g > 0 runs the negative branch
    "ZImagePipeline": PipelineDrive("z-image", ("prompt_embeds", "negative_prompt_embeds"), cfg_above=0.0),
    "Flux2KleinPipeline": PipelineDrive("flux2-klein", ("prompt_embeds", None), negatives=Negatives.EMPTY),
    "Flux2Pipeline": PipelineDrive("flux2", ("prompt_embeds", None), negatives=Negatives.NONE),
    "Lumina2Pipeline": PipelineDrive("lumina2", _MASKED),
    "QwenImagePipeline": PipelineDrive("qwen-image", ("prompt_embeds", "prompt_embeds_mask"),
                                       negatives=Negatives.EMPTY, guidance="true_cfg_scale"),
    "PixArtSigmaPipeline": PipelineDrive("pixart-sigma", _MASKED, call=_PIXART),
    "ChromaPipeline": PipelineDrive("chroma", ("prompt_embeds", None, "prompt_attention_mask",
                                               "negative_prompt_embeds", None, "negative_prompt_attention_mask")),
    "SanaPipeline": PipelineDrive("sana", _MASKED, call=_PIXART),
    "CogView4Pipeline": PipelineDrive("cogview4", ("prompt_embeds", "negative_prompt_embeds")),
    "HiDreamImagePipeline": PipelineDrive("hidream", (
        "prompt_embeds_t5", "negative_prompt_embeds_t5", "prompt_embeds_llama3", "negative_prompt_embeds_llama3",
        "pooled_prompt_embeds", "negative_pooled_prompt_embeds")),
}


def drive_of(pipeline: Any) -> PipelineDrive:
    """The row of ``pipeline``'s class (or a base class); any other pipeline with a ``.unet`` is driven
    like SD1. Raises EvaluationError naming the class when there is none."""
    for cls in type(pipeline).__mro__:
        if cls.__name__ in DRIVES:
            return DRIVES[cls.__name__]
    if getattr(pipeline, "unet", None) is not None:
        return _SD
    raise EvaluationError(f"image evaluation does not know how to drive {type(pipeline).__name__}; add its row "
                          "to DRIVES in engine/evaluation/pipeline_drives.py, or evaluate with --text-only")
