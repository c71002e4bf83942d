"""Component configs of every random-weight pipeline family, tiny and full.

``full`` gives the real shapes of every text encoder (CLIP-L, OpenCLIP-H, OpenCLIP-bigG, T5-v1.1-XXL)
and, for SD1/SD2, of the UNet and VAE too. For SDXL, SD3 and FLUX the full denoiser (2.6 B, 2 B and
12 B parameters) does not fit a CPU box, so ``full`` pairs the real encoders with a small denoiser
whose conditioning widths (cross-attention, pooled, joint attention) match them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.builder.common import ARCHS, SIZES, BuildError, check_choice
from engine.builder.configs_2026 import FULL_ENCODERS, LLM_ARCHS, SCHEDULERS, denoiser_and_vae, encoder_class
from engine.builder.configs_hidream import HIDREAM_FULL, HIDREAM_MAX_LENGTH, LLAMA_TINY, hidream_denoiser
from engine.builder.t5_shapes import t5_config
from engine.builder.vocab import CLIP_MAX_LENGTH, CLIP_VOCAB_SIZE

# Stable Diffusion v1.x training noise schedule, as its PNDM scheduler ships it.
SD_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
SDXL_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
}
SD3_SCHEDULER_CONFIG: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 3.0}
FLUX_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5,
    "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096,
}
SCHEDULER_CLASSES = {
    "sd1": "PNDMScheduler", "sd2": "PNDMScheduler", "sdxl": "EulerDiscreteScheduler",
    "sd3": "FlowMatchEulerDiscreteScheduler", "flux": "FlowMatchEulerDiscreteScheduler", **SCHEDULERS,
}


@dataclass(frozen=True)
class EncoderSpec:
    """One text encoder of a pipeline: its transformers class, config kwargs and tokenizer kind."""

    model_class: str  # CLIPTextModel | CLIPTextModelWithProjection | T5EncoderModel
    config: dict[str, Any]
    tokenizer: str  # "clip" (pads with EOS) | "clip-bang" (pads with "!") | "t5"


@dataclass(frozen=True)
class PipelineConfigs:
    """Constructor arguments of every component of one pipeline family at one size."""

    size: str
    encoders: dict[str, EncoderSpec]  # pipeline attribute name -> spec, in pipeline order
    denoiser: dict[str, Any]  # UNet2DConditionModel / SD3Transformer2DModel / FluxTransformer2DModel kwargs
    vae: dict[str, Any]  # AutoencoderKL kwargs
    scheduler: dict[str, Any]
    arch: str = "sd1"
    denoiser_full: bool = field(default=True)  # False: small denoiser with the real conditioning widths
    denoiser_class: str = ""  # diffusers class of the denoiser; "" = the SD1-FLUX.1 rule in builder.pipelines
    vae_class: str = "AutoencoderKL"

    @property
    def text_encoder(self) -> dict[str, Any]:
        """Config kwargs of the first text encoder (SD1's only one)."""
        return self.encoders["text_encoder"].config

    @property
    def unet(self) -> dict[str, Any]:
        return self.denoiser


# ----- text encoders ----------------------------------------------------------------------------

_CLIP_IDS = dict(
    vocab_size=CLIP_VOCAB_SIZE, max_position_embeddings=CLIP_MAX_LENGTH,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
)
# (hidden, mlp, layers, heads, act) of each CLIP text tower
_CLIP_SHAPES = {
    ("clip-l", "full"): (768, 3072, 12, 12, "quick_gelu"),
    ("clip-l", "tiny"): (32, 64, 4, 4, "quick_gelu"),
    ("clip-h", "full"): (1024, 4096, 23, 16, "gelu"),  # SD2: OpenCLIP-H with its last block removed
    ("clip-h", "tiny"): (32, 64, 5, 4, "gelu"),
    ("clip-g", "full"): (1280, 5120, 32, 20, "gelu"),  # OpenCLIP bigG/14
    ("clip-g", "tiny"): (48, 96, 5, 4, "gelu"),
}


def clip_config(tower: str, size: str) -> dict[str, Any]:
    hidden, mlp, layers, heads, act = _CLIP_SHAPES[(tower, size)]
    return dict(
        hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=heads,
        projection_dim=hidden, hidden_act=act, **_CLIP_IDS,
    )


# ----- denoisers and VAEs -----------------------------------------------------------------------


def _unet_sd(size: str, cross: int, linear: bool) -> dict[str, Any]:
    if size == "tiny":
        unet = dict(
            sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        )
    else:
        unet = dict(
            sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )
    unet.update(
        cross_attention_dim=cross, norm_num_groups=32, in_channels=4, out_channels=4, act_fn="silu",
        flip_sin_to_cos=True, freq_shift=0,
    )
    if linear:  # SD2: linear attention projections and per-block head dims
        unet.update(use_linear_projection=True,
                    attention_head_dim=(2, 4) if size == "tiny" else (5, 10, 20, 20))
    else:
        unet.update(attention_head_dim=8)
    return unet


def _unet_sdxl(pooled: int, cross: int, time_dim: int) -> dict[str, Any]:
    return dict(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=pooled + 6 * time_dim, cross_attention_dim=cross,
        norm_num_groups=32, in_channels=4, out_channels=4, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
    )


def _vae(size: str, latent: int = 4, **extra: Any) -> dict[str, Any]:
    if size == "tiny":
        vae = dict(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=8, sample_size=64)
    else:
        vae = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, sample_size=512)
    vae.update(
        in_channels=3, out_channels=3, latent_channels=latent, act_fn="silu",
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, **extra,
    )
    return vae


def _flow_vae(size: str, scaling: float, shift: float) -> dict[str, Any]:
    return _vae(size, 16, scaling_factor=scaling, shift_factor=shift, use_quant_conv=False,
                use_post_quant_conv=False)


def pipeline_configs(size: str = "tiny", arch: str = "sd1") -> PipelineConfigs:
    """Component configs of one family (``sd1``, ``sd2``, ``sdxl``, ``sd3``, ``flux``) at one size.

    SD1 full is SD-1.4's shapes (~1.07 B params). See the module docstring for what ``full`` means
    for the others.
    """
    check_choice("size", size, SIZES)
    check_choice("arch", arch, ARCHS)
    if arch in LLM_ARCHS:
        return _configs_2026(size, arch)
    if arch == "hidream":
        return _configs_hidream(size)
    clip_l = clip_config("clip-l", size)
    if arch == "sd1":
        encoders = {"text_encoder": EncoderSpec("CLIPTextModel", clip_l, "clip")}
        return PipelineConfigs(size, encoders, _unet_sd(size, clip_l["hidden_size"], False), _vae(size),
                               dict(SD_SCHEDULER_CONFIG), arch)
    if arch == "sd2":
        clip_h = clip_config("clip-h", size)
        encoders = {"text_encoder": EncoderSpec("CLIPTextModel", clip_h, "clip-bang")}
        return PipelineConfigs(size, encoders, _unet_sd(size, clip_h["hidden_size"], True), _vae(size),
                               dict(SD_SCHEDULER_CONFIG), arch)
    clip_g = clip_config("clip-g", size)
    if arch == "sdxl":
        encoders = {
            "text_encoder": EncoderSpec("CLIPTextModel", clip_l, "clip"),
            "text_encoder_2": EncoderSpec("CLIPTextModelWithProjection", clip_g, "clip-bang"),
        }
        unet = _unet_sdxl(clip_g["projection_dim"], clip_l["hidden_size"] + clip_g["hidden_size"],
                          8 if size == "tiny" else 256)
        return PipelineConfigs(size, encoders, unet, _vae(size, scaling_factor=0.13025),
                               dict(SDXL_SCHEDULER_CONFIG), arch, denoiser_full=False)
    t5 = t5_config(size)
    if arch == "sd3":
        encoders = {
            "text_encoder": EncoderSpec("CLIPTextModelWithProjection", clip_l, "clip"),
            "text_encoder_2": EncoderSpec("CLIPTextModelWithProjection", clip_g, "clip-bang"),
            "text_encoder_3": EncoderSpec("T5EncoderModel", t5, "t5"),
        }
        if clip_l["hidden_size"] + clip_g["hidden_size"] > t5["d_model"]:
            raise BuildError("SD3 needs the T5 width to hold both CLIP widths")  # config invariant
        transformer = dict(
            sample_size=8 if size == "tiny" else 128, patch_size=2, in_channels=16, out_channels=16,
            num_layers=1, attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
            joint_attention_dim=t5["d_model"], pooled_projection_dim=clip_l["projection_dim"] + clip_g["projection_dim"],
            pos_embed_max_size=16 if size == "tiny" else 96,
        )
        return PipelineConfigs(size, encoders, transformer, _flow_vae(size, 1.5305, 0.0609),
                               dict(SD3_SCHEDULER_CONFIG), arch, denoiser_full=False)
    encoders = {
        "text_encoder": EncoderSpec("CLIPTextModel", clip_l, "clip"),
        "text_encoder_2": EncoderSpec("T5EncoderModel", t5, "t5"),
    }
    transformer = dict(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=t5["d_model"], pooled_projection_dim=clip_l["hidden_size"],
        guidance_embeds=False, axes_dims_rope=(4, 4, 8),
    )
    return PipelineConfigs(size, encoders, transformer, _flow_vae(size, 0.3611, 0.1159),
                           dict(FLUX_SCHEDULER_CONFIG), arch, denoiser_full=False)


def _configs_hidream(size: str) -> PipelineConfigs:
    if size != "tiny":
        raise BuildError(
            f"--size full is not built for hidream: it needs the real text encoders ({HIDREAM_FULL}) and a "
            "17-billion-parameter denoiser; load the published pipeline folder instead"
        )
    limit = HIDREAM_MAX_LENGTH
    clip_l = dict(clip_config("clip-l", size), max_position_embeddings=limit)
    clip_g = dict(clip_config("clip-g", size), max_position_embeddings=limit)
    t5 = t5_config(size)
    encoders = {
        "text_encoder": EncoderSpec("CLIPTextModelWithProjection", clip_l, f"clip:{limit}"),
        "text_encoder_2": EncoderSpec("CLIPTextModelWithProjection", clip_g, f"clip-bang:{limit}"),
        "text_encoder_3": EncoderSpec("T5EncoderModel", t5, "t5"),
        "text_encoder_4": EncoderSpec("LlamaForCausalLM", dict(LLAMA_TINY), "llama3"),
    }
    transformer, vae, scheduler = hidream_denoiser(
        clip_l["projection_dim"] + clip_g["projection_dim"], t5["d_model"], LLAMA_TINY["hidden_size"],
        LLAMA_TINY["num_hidden_layers"],
    )
    return PipelineConfigs(size, encoders, transformer, vae, scheduler, "hidream", denoiser_full=False,
                           denoiser_class="HiDreamImageTransformer2DModel")


def _configs_2026(size: str, arch: str) -> PipelineConfigs:
    if size != "tiny":
        raise BuildError(
            f"--size full is not built for {arch}: it needs the real text encoder ({FULL_ENCODERS[arch]}) and a "
            "multi-billion-parameter denoiser; load the published pipeline folder instead"
        )
    model_class, config, tokenizer = encoder_class(arch)
    width = config.get("hidden_size") or config.get("d_model") or config["text_config"]["hidden_size"]
    if arch in ("flux2-klein", "flux2"):
        width *= 3  # hidden_states 9, 18, 27 (klein) or 10, 20, 30 (dev) stacked on channels
    denoiser_class, denoiser, vae_class, vae, scheduler = denoiser_and_vae(arch, width)
    encoders = {"text_encoder": EncoderSpec(model_class, config, tokenizer)}
    return PipelineConfigs(size, encoders, denoiser, vae, scheduler, arch, denoiser_full=False,
                           denoiser_class=denoiser_class, vae_class=vae_class)
