"""Tiny component configs of HiDream-I1 (``HiDreamImagePipeline``): CLIP-L and bigG with projections (pooled
``text_embeds`` only), T5 and Llama-3.1 (every ``hidden_states[1:]``, one per denoiser block).

The tiny Llama keeps the real structure (GQA, RoPE, RMS norms) with 4 blocks, and the tiny transformer has
4 blocks whose ``llama_layers`` read each of them once, so the denoiser reads every Llama layer as the real
48-block model reads the 32 of Llama-3.1-8B. The CLIPs take 128 positions: the pipeline pads them to
``min(max_sequence_length, 218)`` = 128.
"""

from __future__ import annotations

from typing import Any

HIDREAM_FULL = (
    "CLIP-L and OpenCLIP-bigG with projections, T5-v1.1-XXL (4096 / 10240 / 24) and Llama-3.1-8B-Instruct "
    "(4096 / 14336 / 32)"
)
HIDREAM_MAX_LENGTH = 128  # the pipeline's default max_sequence_length (T5, Llama; the CLIPs' padding)
LLAMA_TINY: dict[str, Any] = dict(
    vocab_size=1500, hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2,
    num_key_value_heads=1, head_dim=8, max_position_embeddings=1024, rms_norm_eps=1e-5, tie_word_embeddings=False,
    bos_token_id=0, eos_token_id=2, pad_token_id=None, initializer_range=0.2,
)  # ids: engine.builder.byte_bpe_vocab.LLAMA3_SPECIALS


def hidream_denoiser(pooled_width: int, t5_width: int, llama_width: int, llama_layers: int
                     ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(transformer, VAE, scheduler) kwargs: one block per Llama layer, pooled width = both CLIP projections."""
    blocks = llama_layers
    transformer = dict(
        patch_size=2, in_channels=16, out_channels=16, num_layers=blocks // 2, num_single_layers=blocks - blocks // 2,
        attention_head_dim=8, num_attention_heads=2, caption_channels=[t5_width, llama_width],
        text_emb_dim=pooled_width, num_routed_experts=2, num_activated_experts=1, axes_dims_rope=(4, 2, 2),
        max_resolution=(32, 32), llama_layers=list(range(llama_layers)),
    )
    vae = dict(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=16, norm_num_groups=8, sample_size=32, scaling_factor=0.3611, shift_factor=0.1159,
        use_quant_conv=False, use_post_quant_conv=False,
    )
    return transformer, vae, {"shift": 3.0}
