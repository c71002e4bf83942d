"""Plain transformers text-encoder folders with random weights (the text-space workflow)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.builder.common import TEXT_ENCODER_FAMILIES, BuildError, prepare_folder, write_build_info
from engine.builder.configs import clip_config
from engine.builder.vocab import build_clip_tokenizer
from engine.offline import quiet_hf_logging

_BERT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_BERT_WORDS = (
    "a an the of in on at with and or to for from by is are was photo picture image painting drawing "
    "portrait man woman child person dog cat bird horse bear fish tree flower house car street city "
    "beach forest mountain river sky sun rain snow night red blue green yellow black white old young "
    "small big happy sitting standing running eating playing wearing holding president king queen "
    "prince princess doctor teacher banana apple bowl table chair book cup rose"
).split()


def bert_vocab() -> list[str]:
    """A small WordPiece vocabulary: specials, single characters, their '##' forms and common words."""
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789") + list(".,!?'\"-:;()&/")
    vocab = _BERT_SPECIAL + chars + ["##" + c for c in chars if c.isalnum()]
    vocab += [w for w in _BERT_WORDS if w not in vocab]
    return vocab


def build_text_encoder_folder(path: Path, family: str = "clip", seed: int = 0) -> Path:
    """Write a tiny plain transformers text encoder (model + tokenizer) with random weights.

    ``clip``: a ``CLIPTextModelWithProjection`` with the CLIP BPE tokenizer. ``bert``: a ``BertModel``
    with a small WordPiece vocabulary plus sentence-transformers ``modules.json`` and
    ``1_Pooling/config.json`` (mean pooling), so loaders can find the pooling mode.
    """
    from transformers import BertConfig, BertModel, BertTokenizer, CLIPTextConfig, CLIPTextModelWithProjection

    if family not in TEXT_ENCODER_FAMILIES:
        raise BuildError(f"unknown text encoder family {family!r}; use one of {', '.join(TEXT_ENCODER_FAMILIES)}")
    path = prepare_folder(path)
    quiet_hf_logging()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family == "clip":
            model = CLIPTextModelWithProjection(CLIPTextConfig(**clip_config("clip-l", "tiny")))
            tokenizer = build_clip_tokenizer()
        else:
            vocab = bert_vocab()
            model = BertModel(
                BertConfig(
                    vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                    num_attention_heads=4, max_position_embeddings=128,
                ),
            )
            tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, model_max_length=128)
    model.eval().save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    if family == "bert":
        _write_sentence_transformers_files(path, dim=model.config.hidden_size)
    write_build_info(path, kind="text-encoder", family=family, seed=seed)
    return path


def _write_sentence_transformers_files(path: Path, dim: int) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (path / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    pooling = {
        "word_embedding_dimension": dim,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")
