"""The CLIP judge that scores generated images: softmax(100*cos) over two texts.

Default: the paper's open_clip ViT-bigG-14 (pretrained laion2b_s39b_b160k), taken from the local
Hugging Face cache only. Any other open_clip model: ``MODEL:CHECKPOINT_PATH`` where MODEL is an
open_clip model name or the path of an open_clip model-config JSON (registered under its stem).
Nothing is ever downloaded.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from engine.errors import EngineError
from engine.evaluation.scoring import pair_probs

DEFAULT_JUDGE = "ViT-bigG-14:laion2b_s39b_b160k"
_HF_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


JUDGE_ENV = "REFACT_JUDGE"


class JudgeNotFoundError(EngineError):
    """The judge's weights are not available locally."""


@dataclass(frozen=True)
class JudgeSpec:
    model: str                   # open_clip model name (after registering a config JSON)
    checkpoint: Path | None      # local weights file
    pretrained_tag: str | None   # open_clip pretrained tag resolved in the local HF cache
    config_path: Path | None = None

    @property
    def label(self) -> str:
        return f"{self.model}:{self.checkpoint or self.pretrained_tag}"


def parse_judge_spec(spec: str | None) -> JudgeSpec:
    """``None`` -> the paper's judge; ``MODEL:CHECKPOINT_PATH`` or ``MODEL:PRETRAINED_TAG``."""
    spec = spec or DEFAULT_JUDGE
    model, sep, rest = spec.partition(":")
    if not sep or not model or not rest:
        raise JudgeNotFoundError(f"judge {spec!r} is not MODEL:CHECKPOINT_PATH; pass e.g. --judge ViT-B-32:/models/vitb32.pt")
    config_path = None
    if model.endswith(".json"):
        config_path = Path(model).expanduser()
        if not config_path.is_file():
            raise JudgeNotFoundError(f"judge config {config_path} does not exist; pass an open_clip model-config JSON or a model name")
        model = config_path.stem
    looks_like_path = "/" in rest or rest.endswith((".pt", ".pth", ".bin", ".safetensors"))
    if looks_like_path:
        return JudgeSpec(model, Path(rest).expanduser(), None, config_path)
    return JudgeSpec(model, None, rest, config_path)


def _cached_pretrained(model: str, tag: str, cache_dir: str | Path | None) -> Path:
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    cfg = open_clip.get_pretrained_cfg(model, tag)
    repo = (cfg or {}).get("hf_hub", "").strip("/")
    if not repo:
        raise JudgeNotFoundError(
            f"judge {model}:{tag} is not a known open_clip pretrained tag with Hugging Face weights; "
            "pass --judge MODEL_NAME:CHECKPOINT_PATH"
        )
    for name in _HF_FILES:
        hit = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit)
    where = cache_dir or os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface/hub"
    raise JudgeNotFoundError(
        f"judge {model} ({tag}) not found locally: looked for {repo}/{_HF_FILES[0]} in {where}; "
        f"fetch it on a connected machine (hf download {repo} {_HF_FILES[0]}) or pass --judge MODEL_NAME:CHECKPOINT_PATH"
    )


@dataclass
class Judge:
    """An open_clip model with its eval preprocessing; text features are cached by text."""

    name: str
    model: torch.nn.Module
    preprocess: object
    tokenizer: object
    device: torch.device
    _texts: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return torch.autocast("cpu", enabled=False)

    def encode_images(self, images: Sequence, batch_size: int = 32) -> torch.Tensor:
        """L2-normalized image features [N, d] (float32, cpu) of PIL images."""
        out = []
        with torch.no_grad(), self._autocast():
            for i in range(0, len(images), batch_size):
                x = torch.stack([self.preprocess(im) for im in images[i : i + batch_size]]).to(self.device)
                out.append(torch.nn.functional.normalize(self.model.encode_image(x).float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalized text features [N, d]; each distinct text is encoded once per judge."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._texts))
        if missing:
            with torch.no_grad(), self._autocast():
                feats = self.model.encode_text(self.tokenizer(missing).to(self.device)).float()
            for t, f in zip(missing, torch.nn.functional.normalize(feats, dim=-1).cpu()):
                self._texts[t] = f
        return torch.stack([self._texts[t] for t in texts])

    def pair_probs(self, image_feats: torch.Tensor, texts_a: Sequence[str], texts_b: Sequence[str]) -> torch.Tensor:
        """softmax(100*cos) over [A, B] for each image row; [N, 2]."""
        return pair_probs(image_feats, self.encode_texts(texts_a), self.encode_texts(texts_b), scale=100.0)

    def clip_scores(self, image_feats: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        """100*cos(image, caption) per row."""
        return 100.0 * (image_feats * self.encode_texts(captions)).sum(-1)


def load_judge(spec: str | None = None, device: str | torch.device = "cpu", cache_dir: str | Path | None = None) -> Judge:
    """Load the judge offline; raises JudgeNotFoundError (one line) when its weights are missing.

    ``spec`` None means $REFACT_JUDGE when set (so the CLI and the TUI share one setting), else the
    paper's ViT-bigG-14 from the local cache.
    """
    import open_clip

    js = parse_judge_spec(spec or os.environ.get(JUDGE_ENV) or None)
    if js.config_path is not None:
        open_clip.add_model_config(js.config_path)
    if js.model not in open_clip.list_models():
        raise JudgeNotFoundError(
            f"judge model {js.model!r} is not an open_clip model; pass a name from open_clip.list_models() or a config JSON path"
        )
    if js.checkpoint is not None:
        if not js.checkpoint.is_file():
            raise JudgeNotFoundError(f"judge checkpoint {js.checkpoint} does not exist; pass --judge MODEL_NAME:CHECKPOINT_PATH with a local file")
        weights = js.checkpoint
    else:
        weights = _cached_pretrained(js.model, js.pretrained_tag, cache_dir)
    device = torch.device(device)
    model, _, preprocess = open_clip.create_model_and_transforms(js.model, pretrained=str(weights), device=device)
    model.eval()
    return Judge(js.label, model, preprocess, open_clip.get_tokenizer(js.model), device)


# A small open_clip architecture for offline demos and tests (random weights: scores are not
# meaningful, but every code path of image evaluation runs).
TINY_JUDGE_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 1},
}


def build_random_judge(folder: Path, seed: int = 0) -> str:
    """Write a tiny random open_clip judge (config JSON + safetensors); returns its --judge spec."""
    import json

    import open_clip
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "tiny-judge.json"
    cfg.write_text(json.dumps(TINY_JUDGE_CONFIG))
    open_clip.add_model_config(cfg)
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)  # open_clip warns that no pretrained weights were loaded: intended
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.create_model("tiny-judge")
    finally:
        root_logger.setLevel(level)
    ckpt = folder / "tiny-judge.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    return f"{cfg}:{ckpt}"
