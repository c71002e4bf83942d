"""T5-v1.1 encoder shapes shared by the SD3/FLUX.1 and the T5-only (PixArt-Sigma, Chroma) builds."""

from __future__ import annotations

from typing import Any


def t5_config(size: str) -> dict[str, Any]:
    """T5-v1.1-XXL encoder shapes (4.76 B parameters) or a 3-block tiny one."""
    if size == "full":
        shape = dict(vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
                     relative_attention_num_buckets=32, relative_attention_max_distance=128)
    else:
        shape = dict(vocab_size=1280, d_model=96, d_ff=128, d_kv=24, num_heads=4, num_layers=3,
                     relative_attention_num_buckets=8, relative_attention_max_distance=32)
    return dict(
        shape, feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True,
        layer_norm_epsilon=1e-6, dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        is_encoder_decoder=False, use_cache=False, tie_word_embeddings=False,
    )
