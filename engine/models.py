"""Load a text-to-image pipeline or a plain text encoder from disk, offline, ready to edit.

A source is a local folder (an SD pipeline folder with ``model_index.json`` or a transformers
text-encoder folder with ``config.json``) or a Hugging Face hub id that is already in the local cache.
Nothing is ever downloaded: weights are read as safetensors only and no remote code runs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.offline import ensure_offline, hub_cache_dir, quiet_hf_logging

ensure_offline()  # before torch / transformers / diffusers are imported below or by callers

import torch  # noqa: E402

from engine.errors import DeltaIntegrityError, EngineError, ModelFormatError, ModelNotFoundError  # noqa: E402
from engine.hashing import module_hash  # noqa: E402

KINDS = ("sd-pipeline", "text-encoder")
# Text-encoder classes a pipeline's model_index.json may name; anything else is refused, not imported.
_PIPELINE_ENCODER_CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class LoadedModel:
    """A model ready to edit: its text encoder, tokenizer and (for a pipeline) the pipeline around it."""

    source: str  # as given by the user (path or hub id)
    path: Path  # resolved local folder
    kind: str  # "sd-pipeline" | "text-encoder"
    text_encoder: torch.nn.Module  # for a pipeline: pipe.text_encoder itself
    tokenizer: Any  # PreTrainedTokenizerBase
    pipeline: Any | None  # DiffusionPipeline or None
    adapter: Any  # EncoderAdapter
    device: torch.device
    pooling: tuple[str, bool] | None = None  # sentence-transformers (mode, normalize), if the folder has one
    base_fc2: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # fc2 weights at load time

    @property
    def family(self) -> str:
        """Encoder family: "clip" or "bert"."""
        return self.adapter.family

    def encoder_hash(self) -> str:
        """sha256 of the text encoder's current state dict."""
        return module_hash(self.text_encoder)

    def fc2_modules(self) -> dict[str, torch.nn.Linear]:
        """Every layer's editable fc2 matrix, keyed by its module name inside the text encoder."""
        wanted = [self.adapter.fc2(i) for i in range(self.adapter.num_layers)]
        names = {id(m): n for n, m in self.text_encoder.named_modules()}
        return {names[id(m)]: m for m in wanted}

    def snapshot_fc2(self) -> dict[str, torch.Tensor]:
        """CPU copies of all fc2 weights (ReFACT only ever edits these), keyed "<module>.weight"."""
        return {f"{n}.weight": m.weight.detach().to("cpu", copy=True) for n, m in self.fc2_modules().items()}

    @torch.no_grad()
    def restore_fc2(self, snapshot: dict[str, torch.Tensor]) -> None:
        """Copy a ``snapshot_fc2()`` back in place (the parameter objects stay the same)."""
        current = {f"{n}.weight": m.weight for n, m in self.fc2_modules().items()}
        if set(snapshot) != set(current):
            raise DeltaIntegrityError(
                "the fc2 snapshot does not belong to this model (different layers); take it from the same model"
            )
        for name, weight in current.items():
            saved = snapshot[name]
            if saved.shape != weight.shape:
                raise DeltaIntegrityError(
                    f"fc2 snapshot {name} has shape {tuple(saved.shape)}, the model {tuple(weight.shape)}; "
                    "take it from the same model"
                )
            weight.copy_(saved.to(device=weight.device, dtype=weight.dtype))

    def restore_base(self) -> None:
        """Put every fc2 weight back to what was loaded from disk (undoes all edits)."""
        self.restore_fc2(self.base_fc2)


# ---------------------------------------------------------------------------------------------
# devices


def resolve_device(spec: str = "auto") -> torch.device:
    """"auto" (CUDA if present, else CPU), "cpu", "cuda" or "cuda:N"; refuses a GPU that is not there."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if match is None:
        raise EngineError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise EngineError(f"device {spec!r} was requested but torch sees no CUDA GPU; use --device cpu")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise EngineError(
            f"device {spec!r} does not exist (this machine has {torch.cuda.device_count()} GPU(s)); "
            "pick a lower index"
        )
    return torch.device("cuda", index)


# ---------------------------------------------------------------------------------------------
# resolving a source to a folder


def resolve_source(source: str | Path) -> Path:
    """The local folder a path or cached hub id refers to; ModelNotFoundError if there is none."""
    text = str(source).strip()
    if not text:
        raise ModelNotFoundError("no model given; pass --model with a folder or a Hugging Face id")
    path = Path(text).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise ModelFormatError(f"{path} is a file; pass the model's folder (the one holding config.json)")
    if isinstance(source, Path) or not _looks_like_hub_id(text):
        raise ModelNotFoundError(f"model folder {text!r} does not exist; check the path or pass a cached hub id")
    return _from_hub_cache(text)


def _looks_like_hub_id(text: str) -> bool:
    return bool(_HUB_ID.match(text)) and ".." not in text and not text.startswith(("/", ".", "~"))


def _from_hub_cache(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    cache = hub_cache_dir()
    try:
        folder = snapshot_download(repo_id, cache_dir=cache, local_files_only=True)
    except HFValidationError:
        raise ModelNotFoundError(
            f"model {repo_id!r} is neither a folder nor a valid Hugging Face id; check the spelling"
        ) from None
    except Exception:  # LocalEntryNotFoundError and friends: not cached
        raise ModelNotFoundError(
            f"model {repo_id!r} is not in the local Hugging Face cache ({cache}) or a folder; download it on "
            f"a machine with internet (hf download {repo_id}) and copy the cache, or pass --model /path/to/folder"
        ) from None
    return Path(folder)


def detect_kind(folder: Path) -> str:
    """"sd-pipeline" (has model_index.json) or "text-encoder" (has config.json); else ModelFormatError."""
    if (folder / "model_index.json").is_file():
        return "sd-pipeline"
    if _transformer_folder(folder) is not None:
        return "text-encoder"
    raise ModelFormatError(
        f"{folder} holds neither a diffusers pipeline (model_index.json) nor a transformers model "
        "(config.json); pass a pipeline or text-encoder folder"
    )


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


def _pipeline_index(folder: Path) -> dict[str, Any]:
    index = _read_json(folder / "model_index.json")
    if not isinstance(index, dict):
        raise ModelFormatError(f"{folder / 'model_index.json'} is not a diffusers model index; re-download the model")
    return index


def _require_safetensors(folder: Path, what: str) -> None:
    if not any(folder.glob("*.safetensors")):
        raise ModelFormatError(
            f"{what} in {folder} has no .safetensors weights (pickled weights are never loaded); "
            "convert it to safetensors"
        )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


# ---------------------------------------------------------------------------------------------
# loading


def load_model(source: str | Path, device: str = "auto", with_pipeline: bool = True) -> LoadedModel:
    """Load a pipeline or text-encoder folder (or a cached hub id) offline, onto ``device``.

    For a pipeline, ``text_encoder`` is the pipeline's own encoder object. ``with_pipeline=False``
    reads only the text_encoder and tokenizer subfolders (faster; ``pipeline`` is then None).
    """
    folder = resolve_source(source)
    kind = detect_kind(folder)
    dev = resolve_device(device)
    quiet_hf_logging()
    pooling = None
    pipeline = None
    if kind == "sd-pipeline":
        if with_pipeline:
            pipeline = _load_pipeline(folder)
            encoder, tokenizer = pipeline.text_encoder, pipeline.tokenizer
        else:
            encoder, tokenizer = _load_pipeline_encoder(folder)
    else:
        model_folder = _transformer_folder(folder)
        assert model_folder is not None  # detect_kind checked it
        encoder, tokenizer = _load_text_encoder(model_folder)
        pooling = read_pooling(folder)
    (pipeline if pipeline is not None else encoder).to(dev)
    encoder.eval()
    encoder.requires_grad_(False)
    adapter = _adapter_for(encoder, pooling)
    model = LoadedModel(
        source=str(source), path=folder, kind=kind, text_encoder=encoder, tokenizer=tokenizer,
        pipeline=pipeline, adapter=adapter, device=dev, pooling=pooling,
    )
    model.base_fc2 = model.snapshot_fc2()
    return model


def _load_pipeline(folder: Path) -> Any:
    from diffusers import DiffusionPipeline

    index = _pipeline_index(folder)
    if "text_encoder" not in index or not (folder / "text_encoder").is_dir():
        raise ModelFormatError(f"pipeline {folder} has no text_encoder; ReFACT edits the pipeline's text encoder")
    _require_safetensors(folder / "text_encoder", "the text encoder")
    try:
        pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    except EngineError:
        raise
    except Exception as exc:
        raise ModelFormatError(f"could not load the pipeline in {folder} ({_one_line(exc)})") from None
    if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "tokenizer", None) is None:
        raise ModelFormatError(f"pipeline {folder} loaded without a text encoder or tokenizer")
    return pipe


def load_tokenizer(source: str | Path) -> Any:
    """Only the tokenizer of a pipeline or text-encoder folder / cached hub id (offline, fast)."""
    import transformers

    quiet_hf_logging()
    folder = resolve_source(source)
    if detect_kind(folder) == "sd-pipeline":
        folder = folder / "tokenizer"
    else:
        folder = _transformer_folder(folder) or folder
    try:
        return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise ModelFormatError(f"could not load the tokenizer in {folder} ({_one_line(exc)})") from None


def token_limit(tokenizer: Any, default: int = 77) -> int:
    """The longest input the tokenizer's model takes (CLIP 77, BERT 512); ``default`` when unset."""
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit <= 100_000 else default


def _load_pipeline_encoder(folder: Path) -> tuple[torch.nn.Module, Any]:
    import transformers

    entry = _pipeline_index(folder).get("text_encoder")
    class_name = entry[1] if isinstance(entry, list) and len(entry) == 2 else None
    if class_name not in _PIPELINE_ENCODER_CLASSES:
        raise ModelFormatError(
            f"pipeline {folder} has text encoder {class_name!r}; supported: {', '.join(_PIPELINE_ENCODER_CLASSES)}"
        )
    sub = folder / "text_encoder"
    _require_safetensors(sub, "the text encoder")
    try:
        encoder = getattr(transformers, class_name).from_pretrained(sub, local_files_only=True, use_safetensors=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    except Exception as exc:
        raise ModelFormatError(f"could not load the text encoder of {folder} ({_one_line(exc)})") from None
    return encoder, tokenizer


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
    else:
        raise ModelFormatError(
            f"{folder} holds a {model_type!r} model; supported text encoders are CLIP and BERT"
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


def _adapter_for(encoder: torch.nn.Module, pooling: tuple[str, bool] | None) -> Any:
    from engine.adapters import adapter_for

    if pooling is not None:
        return adapter_for(encoder, pooling=pooling[0], normalize=pooling[1])
    return adapter_for(encoder)
