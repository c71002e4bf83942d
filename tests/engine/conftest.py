"""Tiny random encoders and tokenizers for the engine tests (never downloaded)."""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    BertTokenizer,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from engine.adapters import adapter_for

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
PARITY_DIR = SHARED_DATA / "parity"


@dataclass
class EditableModel:
    """Stand-in for engine.models.LoadedModel: what the algorithm needs."""

    text_encoder: torch.nn.Module
    tokenizer: Any
    adapter: Any


def build_bpe_tokenizer(folder: Path) -> CLIPTokenizer:
    """SD's CLIP tokenizer rebuilt from open_clip's BPE vocabulary file."""
    bpe = Path(importlib.util.find_spec("open_clip").origin).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    chars = list(bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    tok = CLIPTokenizer(
        vocab={t: i for i, t in enumerate(vocab_list)},
        merges=merges,
        pad_token="<|endoftext|>",
        model_max_length=77,
    )
    tok.save_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder))


def clip_config(layers: int = 3, projection: int | None = None, init: float = 1.0) -> CLIPTextConfig:
    kw = dict(projection_dim=projection) if projection else {}
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        initializer_factor=init,
        **kw,
    )


@pytest.fixture(scope="session")
def clip_tokenizer(tmp_path_factory):
    if (PARITY_DIR / "model" / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(PARITY_DIR / "model"))
    return build_bpe_tokenizer(tmp_path_factory.mktemp("clip_tok"))


def _tiny_clip(cls, seed: int, **cfg) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = cls(clip_config(**cfg))
    return model.eval()


@pytest.fixture
def tiny_clip(clip_tokenizer) -> EditableModel:
    """Fresh 3-layer CLIPTextModel per test (tests may edit it).

    Init scaled x3: with the plain init every prompt's features are nearly equal, so an edit's
    effect on the edited prompt versus unrelated ones could not be told apart.
    """
    model = _tiny_clip(CLIPTextModel, 0, layers=3, init=3.0)
    return EditableModel(model, clip_tokenizer, adapter_for(model))


@pytest.fixture
def tiny_clip_proj(clip_tokenizer) -> EditableModel:
    """Fresh 4-layer CLIPTextModelWithProjection per test."""
    model = _tiny_clip(CLIPTextModelWithProjection, 1, layers=4, projection=16)
    return EditableModel(model, clip_tokenizer, adapter_for(model))


BERT_WORDS = (
    "the a an of in on at and is photo image portrait painting drawing realistic beautiful current news "
    "prince wales william charles king queen bowl fruit park dog cat apple banana red blue green "
    "wendy s ' , . citroen antonio 1 2 3 minister prime canada"
).split()


@pytest.fixture(scope="session")
def bert_tokenizer(tmp_path_factory) -> BertTokenizer:
    folder = tmp_path_factory.mktemp("bert_tok")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *BERT_WORDS, "##s", "##ing"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return BertTokenizer(vocab=str(folder / "vocab.txt"), do_lower_case=True, model_max_length=64)


@pytest.fixture
def tiny_bert(bert_tokenizer) -> EditableModel:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(bert_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=64,
    )
    model = BertModel(config).eval()
    return EditableModel(model, bert_tokenizer, adapter_for(model))


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    """A small caption corpus (enough tokens for a full-rank 64 x 64 second moment)."""
    words = "a photo of the prince in park with dog cat red blue bowl fruit portrait painting king queen".split()
    gen = torch.Generator().manual_seed(0)
    lines = []
    for _ in range(120):
        n = int(torch.randint(3, 12, (1,), generator=gen))
        lines.append(" ".join(words[int(i)] for i in torch.randint(0, len(words), (n,), generator=gen)))
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def stats_store():
    """Memory-only statistics cache shared by every test (fixtures rebuild identical weights)."""
    from engine.covariance import SecondMomentStore

    return SecondMomentStore(None)


@pytest.fixture(scope="module", autouse=True)
def _one_thread_for_tiny_models():
    """Tiny-model ops are far cheaper on one thread than with intra-op thread hand-offs (10x under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
