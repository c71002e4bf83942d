"""Build models with random weights, offline: an SD-v1 pipeline folder, a CLIP tokenizer, text encoders.

Nothing here downloads anything. The CLIP tokenizer comes from the BPE file that open_clip_torch ships,
and every weight is drawn from torch's RNG under a fixed seed, so the same seed gives the same weights.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.errors import EngineError
from engine.offline import ensure_offline, quiet_hf_logging

ensure_offline()

SIZES = ("tiny", "full")
TEXT_ENCODER_FAMILIES = ("clip", "bert")

CLIP_VOCAB_SIZE = 49408
CLIP_MAX_LENGTH = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
# 49408 = 256 byte symbols + 256 byte symbols with '</w>' + merges + 2 special tokens.
_N_MERGES = CLIP_VOCAB_SIZE - 2 * 256 - 2

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


class BuildError(EngineError):
    """A model could not be built (bad size or family, missing BPE file, unwritable folder)."""


@dataclass(frozen=True)
class PipelineConfigs:
    """Constructor arguments of every component of an SD-v1 pipeline of one size."""

    size: str
    text_encoder: dict[str, Any]  # CLIPTextConfig kwargs
    unet: dict[str, Any]  # UNet2DConditionModel kwargs
    vae: dict[str, Any]  # AutoencoderKL kwargs
    scheduler: dict[str, Any]  # PNDMScheduler kwargs


# ---------------------------------------------------------------------------------------------
# tokenizer


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins that byte-level BPE uses for raw bytes, in CLIP's vocabulary order.

    Printable Latin-1 bytes stand for themselves and come first; the remaining bytes follow in byte
    order, shifted to code points from 256 up.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    kept = set(keep)
    rest = [b for b in range(256) if b not in kept]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(rest))]


def clip_bpe_path() -> Path:
    """Location of open_clip's ``bpe_simple_vocab_16e6.txt.gz`` (found without importing open_clip)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise BuildError("open_clip_torch is not installed; install it to build the CLIP tokenizer")
    path = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise BuildError(f"{path} is missing; reinstall open_clip_torch to build the CLIP tokenizer")
    return path


def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The CLIP BPE vocabulary (49408 entries) and its 48894 merge pairs, in SD's id order."""
    with gzip.open(clip_bpe_path(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]  # line 0 is a header
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + [a + b for a, b in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise BuildError(f"the CLIP BPE file gave {len(vocab)} tokens instead of {CLIP_VOCAB_SIZE}")
    return vocab, merges


def build_clip_tokenizer():
    """A transformers ``CLIPTokenizer`` giving Stable Diffusion's exact token ids, built offline."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=CLIP_MAX_LENGTH,
    )


# ---------------------------------------------------------------------------------------------
# configs


def pipeline_configs(size: str = "tiny") -> PipelineConfigs:
    """Component configs of a tiny (seconds on CPU) or full (SD1.4 shapes, ~1.07 B params) pipeline."""
    if size == "tiny":
        text = dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
            projection_dim=32,
        )
        unet = dict(
            sample_size=8,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            norm_num_groups=32,
        )
        vae = dict(
            block_out_channels=(8, 8, 16, 16),
            layers_per_block=1,
            norm_num_groups=8,
            sample_size=64,
        )
    elif size == "full":
        text = dict(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            projection_dim=768,
        )
        unet = dict(
            sample_size=64,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            norm_num_groups=32,
        )
        vae = dict(
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            norm_num_groups=32,
            sample_size=512,
        )
    else:
        raise BuildError(f"unknown model size {size!r}; use one of {', '.join(SIZES)}")
    text.update(
        vocab_size=CLIP_VOCAB_SIZE, max_position_embeddings=CLIP_MAX_LENGTH, hidden_act="quick_gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    unet.update(
        in_channels=4, out_channels=4, act_fn="silu", flip_sin_to_cos=True, freq_shift=0, attention_head_dim=8,
    )
    vae.update(
        in_channels=3, out_channels=3, latent_channels=4, act_fn="silu",
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    return PipelineConfigs(size, text, unet, vae, dict(SD_SCHEDULER_CONFIG))


def _prepare_folder(path: Path) -> Path:
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise BuildError(f"{path} is a file; pass a folder path to build the model in")
    if path.is_dir() and any(path.iterdir()):
        raise BuildError(f"{path} is not empty; pass a new or empty folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------------
# pipeline


def make_pipeline(size: str = "tiny", seed: int = 0):
    """An in-memory SD-v1 ``StableDiffusionPipeline`` with random weights, deterministic in ``seed``."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = pipeline_configs(size)
    quiet_hf_logging()
    with torch.random.fork_rng(devices=[]):
        # one seed per component so that changing one component's config leaves the others alone
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(**cfg.text_encoder)).eval()
        torch.manual_seed(seed + 1)
        unet = UNet2DConditionModel(**cfg.unet).eval()
        torch.manual_seed(seed + 2)
        vae = AutoencoderKL(**cfg.vae).eval()
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_clip_tokenizer(),
        unet=unet,
        scheduler=PNDMScheduler(**cfg.scheduler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_pipeline(path: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a complete SD-v1-style ``StableDiffusionPipeline`` with random weights to ``path``.

    Deterministic in ``seed``; saved as safetensors; no safety checker. Returns the folder.
    """
    pipeline_configs(size)  # refuse a bad size before touching the folder
    path = _prepare_folder(path)
    make_pipeline(size, seed).save_pretrained(path, safe_serialization=True)
    _write_build_info(path, kind="sd-pipeline", size=size, seed=seed)
    return path


def _write_build_info(path: Path, **info: Any) -> None:
    # Marks the folder as a random-weight build so reports never mistake it for a trained model.
    (path / "refact_build.json").write_text(json.dumps({"random_weights": True, **info}, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# plain text encoders (text-space workflow)

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
    path = _prepare_folder(path)
    quiet_hf_logging()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family == "clip":
            model = CLIPTextModelWithProjection(CLIPTextConfig(**pipeline_configs("tiny").text_encoder))
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
    _write_build_info(path, kind="text-encoder", family=family, seed=seed)
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
