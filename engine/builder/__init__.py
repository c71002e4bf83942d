"""Build models with random weights, offline: pipelines of every family, tokenizers, text encoders.

Nothing here downloads anything. The CLIP tokenizer comes from the BPE file that open_clip_torch ships,
the T5 tokenizer is trained on the shipped caption corpus, and every weight is drawn from torch's RNG
under a fixed seed, so the same seed gives the same weights.

- ``vocab``: tokenizers; ``configs``: component shapes per family and size;
  ``pipelines``: in-memory pipelines and diffusers folders; ``text_encoders``: plain encoder folders.
"""

from __future__ import annotations

from engine.offline import ensure_offline

ensure_offline()

from engine.builder.common import (  # noqa: E402
    ARCHS,
    DTYPES,
    PIPELINE_CLASSES,
    SIZES,
    TEXT_ENCODER_FAMILIES,
    BuildError,
)
from engine.builder.configs import (  # noqa: E402
    SD_SCHEDULER_CONFIG,
    EncoderSpec,
    PipelineConfigs,
    clip_config,
    pipeline_configs,
)
from engine.builder.pipelines import build_pipeline, make_pipeline, make_text_encoder, make_tokenizer  # noqa: E402
from engine.builder.t5_shapes import t5_config  # noqa: E402
from engine.builder.text_encoders import bert_vocab, build_text_encoder_folder  # noqa: E402
from engine.builder.vocab import (  # noqa: E402
    BOS_TOKEN,
    CLIP_MAX_LENGTH,
    CLIP_VOCAB_SIZE,
    EOS_TOKEN,
    T5_MAX_LENGTH,
    build_clip_tokenizer,
    build_t5_tokenizer,
    clip_bpe_path,
    clip_vocab_and_merges,
)

__all__ = [
    "ARCHS", "BOS_TOKEN", "CLIP_MAX_LENGTH", "CLIP_VOCAB_SIZE", "DTYPES", "EOS_TOKEN", "PIPELINE_CLASSES",
    "SD_SCHEDULER_CONFIG", "SIZES", "T5_MAX_LENGTH", "TEXT_ENCODER_FAMILIES", "BuildError", "EncoderSpec",
    "PipelineConfigs", "bert_vocab", "build_clip_tokenizer", "build_pipeline", "build_t5_tokenizer",
    "build_text_encoder_folder", "clip_bpe_path", "clip_config", "clip_vocab_and_merges", "make_pipeline",
    "make_text_encoder", "make_tokenizer", "pipeline_configs", "t5_config",
]
