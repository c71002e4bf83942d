"""Tiny component configs of the 2026 families: LLM-conditioned (Z-Image, FLUX.2 klein, Lumina 2) and
T5-only (PixArt-Sigma, Chroma) pipelines.

Every tiny text encoder keeps the real model's structure (Qwen3's q/k norms, Gemma-2's four norms,
soft-capping and sliding windows, T5's gated GELU) and the denoiser reads the real readout width
(FLUX.2 klein: three stacked hidden states). ``full`` is not built here: a full build needs the real
text encoder (Qwen3-4B 8 GB, Gemma-2-2B 5 GB, T5-XXL 9.5 GB in bf16) and a denoiser of 2-12 B
parameters, which no CPU box holds; use the published weights instead.
"""

from __future__ import annotations

from typing import Any

from engine.builder.common import BuildError
from engine.builder.t5_shapes import t5_config

LLM_ARCHS = ("z-image", "flux2-klein", "lumina2", "pixart-sigma", "chroma", "qwen-image", "flux2", "sana", "cogview4")

# Real text-encoder shapes (hidden / MLP / layers), for --help and the memory figure of C.
FULL_ENCODERS = {
    "z-image": "Qwen3-4B (2560 / 9728 / 36)",
    "flux2-klein": "Qwen3-4B or 8B (2560 / 9728 / 36; 4096 / 12288 / 36)",
    "lumina2": "Gemma-2-2B (2304 / 9216 / 26)",
    "pixart-sigma": "T5-v1.1-XXL (4096 / 10240 / 24)",
    "chroma": "T5-v1.1-XXL (4096 / 10240 / 24)",
    "qwen-image": "Qwen2.5-VL-7B (3584 / 18944 / 28)",
    "sana": "Gemma-2-2B (2304 / 9216 / 26)",
    "cogview4": "GLM-4-9B (4096 / 13696 / 40)",
    "flux2": "Mistral-Small-3.1-24B, text part (5120 / 32768 / 40)",
}

# transformers' default init (std 0.02) leaves a 16-wide random LM's MLP outputs so small that ReFACT's
# delta clamp (a multiple of the subject's own MLP output) barely moves anything; 0.2 gives
# features of order one, as a trained model has.
_INIT = 0.2
_VOCAB = 1500  # the trained BPE tokenizers' size (engine.builder.llm_vocab)
_QWEN3 = dict(
    vocab_size=_VOCAB, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=1,
    head_dim=8, max_position_embeddings=1024, rms_norm_eps=1e-6, tie_word_embeddings=False,
    pad_token_id=0, bos_token_id=None, eos_token_id=2, initializer_range=_INIT,
)
_GEMMA2 = dict(
    vocab_size=_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, max_position_embeddings=1024, sliding_window=8, query_pre_attn_scalar=8,
    attn_logit_softcapping=50.0, final_logit_softcapping=30.0, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    initializer_range=_INIT,
)


def encoder_class(arch: str) -> tuple[str, dict[str, Any], str]:
    """(transformers class, config kwargs, tokenizer kind) of the tiny text encoder of ``arch``."""

    if arch == "z-image":
        return "Qwen3Model", dict(_QWEN3, num_hidden_layers=4), "qwen"
    if arch == "flux2-klein":  # the pipeline reads hidden_states 9, 18, 27: 28 blocks at least
        return "Qwen3ForCausalLM", dict(_QWEN3, num_hidden_layers=28), "qwen"
    if arch == "lumina2":
        return "Gemma2Model", dict(_GEMMA2), "gemma"
    if arch in ("pixart-sigma", "chroma"):
        return "T5EncoderModel", t5_config("tiny"), "t5"
    if arch == "qwen-image":
        text = {k: v for k, v in _QWEN3.items() if k not in ("head_dim", "bos_token_id")}
        text.update(num_hidden_layers=4, max_position_embeddings=2048, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]})
        vision = dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16)
        ids = dict(image_token_id=_VOCAB - 1, video_token_id=_VOCAB - 1, vision_start_token_id=_VOCAB - 1,
                   vision_end_token_id=_VOCAB - 1, vision_token_id=_VOCAB - 1)
        return ("Qwen2_5_VLForConditionalGeneration",
                dict(text_config=text, vision_config=vision, initializer_range=_INIT, **ids), "qwen")
    if arch == "flux2":  # reads hidden_states 10, 20, 30: 32 blocks keep [30] a raw block output, as in the 40-block model
        # A wide MLP (16 -> 256; the real one is 5120 -> 32768): after the 90-token system turn, 32-wide keys of
        # different prompts are so alike that a rank-one edit moved an unrelated prompt as much as the edit's own.
        text = dict(
            vocab_size=_VOCAB, hidden_size=16, intermediate_size=256, num_hidden_layers=32, num_attention_heads=2,
            num_key_value_heads=1, head_dim=8, max_position_embeddings=1024, rms_norm_eps=1e-5, sliding_window=None,
            pad_token_id=8, bos_token_id=1, eos_token_id=2, initializer_range=_INIT, tie_word_embeddings=False,
            model_type="mistral",
        )  # ids: engine.builder.byte_bpe_vocab.MISTRAL_SPECIALS
        vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, head_dim=8,
                      image_size=32, patch_size=16, model_type="pixtral")
        return ("Mistral3ForConditionalGeneration",
                dict(text_config=text, vision_config=vision, spatial_merge_size=1, image_token_index=7,
                     initializer_range=_INIT), "mistral")
    if arch == "sana":  # Gemma2Model, as Sana's model_index names it
        return "Gemma2Model", dict(_GEMMA2), "gemma"
    if arch == "cogview4":  # GlmModel: fused gate_up_proj, partial rotary, no extra norms
        glm = dict(vocab_size=_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=8, partial_rotary_factor=0.5, max_position_embeddings=2048,
                   pad_token_id=0, eos_token_id=0, initializer_range=_INIT)  # ids: llm_vocab STYLES["glm"]
        return "GlmModel", glm, "glm"
    raise BuildError(f"no tiny encoder for {arch!r}")


def denoiser_and_vae(arch: str, text_width: int) -> tuple[str, dict[str, Any], str, dict[str, Any], dict[str, Any]]:
    """(denoiser class, kwargs, VAE class, kwargs, scheduler kwargs) of ``arch``; ``text_width`` = readout width."""
    vae16 = dict(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=16, norm_num_groups=8, sample_size=32,
    )
    if arch == "z-image":
        transformer = dict(
            all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=1, n_refiner_layers=1,
            n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=text_width, rope_theta=256.0,
            t_scale=1000.0, axes_dims=[8, 4, 4], axes_lens=[1024, 32, 32],
        )
        return ("ZImageTransformer2DModel", transformer, "AutoencoderKL",
                dict(vae16, scaling_factor=0.3611, shift_factor=0.1159), {"shift": 3.0})
    if arch == "flux2-klein":
        transformer = dict(
            patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=text_width, timestep_guidance_channels=256,
            axes_dims_rope=[4, 4, 4, 4], guidance_embeds=False,
        )
        vae = dict(
            sample_size=32, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
            up_block_types=("UpDecoderBlock2D",), block_out_channels=(4,), layers_per_block=1, latent_channels=1,
            norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        )
        return "Flux2Transformer2DModel", transformer, "AutoencoderKLFlux2", vae, {}
    if arch == "lumina2":
        transformer = dict(
            sample_size=4, patch_size=2, in_channels=4, hidden_size=16, num_layers=1, num_refiner_layers=1,
            num_attention_heads=2, num_kv_heads=1, multiple_of=16, norm_eps=1e-5, scaling_factor=1.0,
            axes_dim_rope=(4, 2, 2), axes_lens=(300, 64, 64), cap_feat_dim=text_width,
        )
        # Lumina2Pipeline fixes vae_scale_factor = 8, so the VAE must downsample 8x (four blocks) for the
        # pipeline's latent grid and the decoded image to match the requested size.
        vae = dict(vae16, latent_channels=4, scaling_factor=0.3611, shift_factor=0.1159,
                   down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                   block_out_channels=(8, 8, 16, 16))
        return "Lumina2Transformer2DModel", transformer, "AutoencoderKL", vae, {}
    if arch == "pixart-sigma":
        transformer = dict(
            sample_size=8, num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=2,
            caption_channels=text_width, in_channels=4, cross_attention_dim=16, out_channels=8,
            attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
            norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        )
        return "PixArtTransformer2DModel", transformer, "AutoencoderKL", dict(vae16, latent_channels=4), {}
    if arch == "chroma":
        transformer = dict(
            patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=text_width, axes_dims_rope=(4, 4, 8),
            approximator_num_channels=8, approximator_hidden_dim=32, approximator_layers=1,
        )
        vae = dict(vae16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)
        return "ChromaTransformer2DModel", transformer, "AutoencoderKL", vae, {}
    if arch == "qwen-image":
        transformer = dict(
            patch_size=2, in_channels=16, out_channels=4, num_layers=1, attention_head_dim=16, num_attention_heads=3,
            joint_attention_dim=text_width, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
        )
        vae = dict(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
                   latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
        return "QwenImageTransformer2DModel", transformer, "AutoencoderKLQwenImage", vae, {}
    if arch == "flux2":  # as klein, plus the guidance embedding [dev] is distilled with
        _, transformer, vae_class, vae, scheduler = denoiser_and_vae("flux2-klein", text_width)
        return "Flux2Transformer2DModel", dict(transformer, guidance_embeds=True), vae_class, vae, scheduler
    if arch == "sana":
        transformer = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
                           num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16,
                           caption_channels=text_width, sample_size=32, patch_size=1)
        vae = dict(in_channels=3, latent_channels=4, attention_head_dim=2, encoder_block_types=("ResBlock", "EfficientViTBlock"),
                   decoder_block_types=("ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(8, 8),
                   decoder_block_out_channels=(8, 8), encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
                   encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)), upsample_block_type="interpolate",
                   downsample_block_type="Conv", decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407)
        scheduler = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
        return "SanaTransformer2DModel", transformer, "AutoencoderDC", vae, scheduler
    if arch == "cogview4":
        transformer = dict(patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
                           text_embed_dim=text_width, time_embed_dim=16, condition_dim=8, pos_embed_max_size=32,
                           sample_size=32, rope_axes_dim=(4, 4))
        vae = dict(vae16, latent_channels=4)
        scheduler = dict(base_shift=0.25, max_shift=0.75, base_image_seq_len=256, use_dynamic_shifting=True,
                         time_shift_type="linear")
        return "CogView4Transformer2DModel", transformer, "AutoencoderKL", vae, scheduler
    raise BuildError(f"no tiny denoiser for {arch!r}")


SCHEDULERS = {
    "z-image": "FlowMatchEulerDiscreteScheduler", "flux2-klein": "FlowMatchEulerDiscreteScheduler",
    "lumina2": "FlowMatchEulerDiscreteScheduler", "pixart-sigma": "DPMSolverMultistepScheduler",
    "chroma": "FlowMatchEulerDiscreteScheduler", "qwen-image": "FlowMatchEulerDiscreteScheduler",
    "sana": "DPMSolverMultistepScheduler", "cogview4": "FlowMatchEulerDiscreteScheduler",
    "flux2": "FlowMatchEulerDiscreteScheduler", "hidream": "FlowMatchEulerDiscreteScheduler",
}
