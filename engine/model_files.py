"""Model folder reading shared by the loaders: JSON files, safetensors checks, plain text-encoder folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from engine.errors import ModelFormatError


def _transformer_folder(folder: Path) -> Path | None:
    """Where config.json lives: the folder itself, or a sentence-transformers module subfolder."""
    if (folder / "config.json").is_file():
        return folder
    modules = _read_json(folder / "modules.json")
    if isinstance(modules, list):
        for module in (m for m in modules if isinstance(m, dict)):
            sub = folder / str(module.get("path", ""))
            if str(module.get("type", "")).endswith("Transformer") and (sub / "config.json").is_file():
                return sub
    return None


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{path} is not valid JSON ({exc}); repair or re-download the model") from None


def _require_safetensors(folder: Path, what: str) -> None:
    if not any(folder.glob("*.safetensors")):
        raise ModelFormatError(
            f"{what} in {folder} has no .safetensors weights (pickled weights are never loaded); "
            "convert it to safetensors"
        )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _load_text_encoder(folder: Path) -> tuple[torch.nn.Module, Any]:
    import transformers

    config = _read_json(folder / "config.json") or {}
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    if model_type in ("clip_text_model", "clip"):
        # a full CLIP checkpoint contributes its text tower with the projection
        with_projection = model_type == "clip" or any("WithProjection" in a for a in architectures)
        cls = transformers.CLIPTextModelWithProjection if with_projection else transformers.CLIPTextModel
    elif model_type == "bert":
        cls = transformers.BertModel
    elif model_type == "t5":
        cls = transformers.T5EncoderModel
    else:
        raise ModelFormatError(
            f"{folder} holds a {model_type!r} model; supported text encoders are CLIP, T5 and BERT"
        )
    _require_safetensors(folder, "the model")
    kwargs: dict[str, Any] = {}
    if cls is transformers.BertModel and not _has_weights(folder, "pooler."):
        # a missing pooler would be initialised randomly, making the encoder hash differ per load
        kwargs["add_pooling_layer"] = False
    try:
        encoder = cls.from_pretrained(folder, local_files_only=True, use_safetensors=True, **kwargs)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise ModelFormatError(f"could not load the text encoder in {folder} ({_one_line(exc)})") from None
    return encoder, tokenizer


def _has_weights(folder: Path, prefix: str) -> bool:
    """True if any safetensors file in ``folder`` has a tensor whose name contains ``prefix``."""
    from safetensors import safe_open

    for file in folder.glob("*.safetensors"):
        try:
            with safe_open(str(file), framework="pt") as f:
                if any(prefix in key for key in f.keys()):
                    return True
        except Exception as exc:
            raise ModelFormatError(f"{file} is not a readable safetensors file ({_one_line(exc)})") from None
    return False


def read_pooling(folder: Path) -> tuple[str, bool] | None:
    """(mode, normalize) of a sentence-transformers folder: mode "mean" or "cls"; None without one.

    Reads the Pooling module's config (path from modules.json, default ``1_Pooling``); normalize is
    true when modules.json lists a Normalize module.
    """
    modules = _read_json(folder / "modules.json")
    pool_dir = folder / "1_Pooling"
    normalize = False
    if isinstance(modules, list):
        for module in (m for m in modules if isinstance(m, dict)):
            kind = str(module.get("type", ""))
            if kind.endswith("Pooling") and module.get("path"):
                pool_dir = folder / str(module["path"])
            normalize = normalize or kind.endswith("Normalize")
    cfg = _read_json(pool_dir / "config.json")
    if not isinstance(cfg, dict):
        return None
    cls_only = cfg.get("pooling_mode_cls_token") and not cfg.get("pooling_mode_mean_tokens")
    return ("cls" if cls_only else "mean"), normalize
