"""Load a text-to-image pipeline or a plain text encoder from disk, offline, ready to edit.

A source is a local folder (an SD pipeline folder with ``model_index.json`` or a transformers
text-encoder folder with ``config.json``) or a Hugging Face hub id that is already in the local cache.
Nothing is ever downloaded: weights are read as safetensors only and no remote code runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.offline import ensure_offline, hub_cache_dir, quiet_hf_logging

ensure_offline()  # before torch / transformers / diffusers are imported below or by callers

import torch  # noqa: E402

from engine.errors import DeltaIntegrityError, EngineError, ModelFormatError, ModelNotFoundError  # noqa: E402
from engine.model_files import (  # noqa: E402,F401  (read_pooling is public here)
    _load_text_encoder,
    _one_line,
    _read_json,
    _require_safetensors,
    _transformer_folder,
    read_pooling,
)
from engine.packaged_models import resolve_packaged  # noqa: E402
from engine.readout import Readout, default_readout  # noqa: E402
from engine.slots import (  # noqa: E402
    FAMILY_SLOTS,
    EncoderSlot,
    combined_hash,
    default_depth,
    keep_editable_fp32,
    slot_input,
    tokenizer_attr,
)
from engine.tokens import templated  # noqa: E402


class SlotError(EngineError):
    """An encoder slot named by the user does not exist on the model."""

KINDS = ("sd-pipeline", "text-encoder")
# Text-encoder classes a pipeline's model_index.json may name; anything else is refused, not imported.
_PIPELINE_ENCODER_CLASSES = (
    "CLIPTextModel", "CLIPTextModelWithProjection", "T5EncoderModel", "Qwen3Model", "Qwen3ForCausalLM", "Gemma2Model",
    "Gemma2ForCausalLM", "LlamaForCausalLM", "GlmModel", "Mistral3ForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration",
)
# model_index.json _class_name -> family (StableDiffusionPipeline is sd1 or sd2, told by its encoder)
PIPELINE_CLASSES = {
    "StableDiffusionPipeline": "sd1",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
    "ZImagePipeline": "z-image",
    "Flux2KleinPipeline": "flux2-klein",
    "Lumina2Pipeline": "lumina2",
    "PixArtSigmaPipeline": "pixart-sigma",
    "ChromaPipeline": "chroma",
    "QwenImagePipeline": "qwen-image",
    "SanaPipeline": "sana",
    "CogView4Pipeline": "cogview4",
    "Flux2Pipeline": "flux2",
    "HiDreamImagePipeline": "hidream",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class LoadedModel:
    """A model ready to edit: its encoder slots and (for a pipeline) the pipeline around them.

    ``text_encoder``, ``tokenizer``, ``adapter``, ``base_fc2`` and ``encoder_hash()`` are the view of
    the first slot (the only one for SD1/SD2 and plain encoders), so single-encoder code keeps working.
    """

    source: str  # as given by the user (path or hub id)
    path: Path  # resolved local folder
    kind: str  # "sd-pipeline" | "text-encoder"
    slots: list[EncoderSlot]
    pipeline: Any | None  # DiffusionPipeline or None
    device: torch.device
    pooling: tuple[str, bool] | None = None  # sentence-transformers (mode, normalize), if the folder has one
    pipeline_family: str | None = None  # sd1 | sd2 | sdxl | sd3 | flux for a pipeline
    dtype: str | None = None  # the dtype it was loaded in (float32 / float16 / bfloat16; None: as stored)

    # -- first-slot view -------------------------------------------------------------------------
    @property
    def text_encoder(self) -> torch.nn.Module:
        return self.slots[0].text_encoder

    @property
    def tokenizer(self) -> Any:
        return self.slots[0].tokenizer

    @property
    def adapter(self) -> Any:
        return self.slots[0].adapter

    @property
    def base_fc2(self) -> dict[str, torch.Tensor]:
        return self.slots[0].base_fc2

    @base_fc2.setter
    def base_fc2(self, value: dict[str, torch.Tensor]) -> None:
        self.slots[0].base_fc2 = value

    @property
    def family(self) -> str:
        """Pipeline family (sd1, sd2, sdxl, sd3, flux); for a plain encoder folder its encoder family."""
        return self.pipeline_family or self.adapter.family

    @property
    def encoder_family(self) -> str:
        """Encoder family of the first slot: "clip", "t5" or "bert"."""
        return self.adapter.family

    def encoder_hash(self) -> str:
        """sha256 of the first slot's text encoder state dict."""
        return self.slots[0].encoder_hash()

    # -- slots -------------------------------------------------------------------------------------
    @property
    def slot_names(self) -> list[str]:
        return [s.name for s in self.slots]

    def slot(self, name: str) -> EncoderSlot:
        """The slot called ``name``; SlotError naming the slots there are otherwise."""
        for s in self.slots:
            if s.name == name:
                return s
        raise SlotError(f"this model has no encoder slot {name!r}; its slots are {', '.join(self.slot_names)}")

    def weights_hashes(self) -> dict[str, str]:
        """Encoder hash of every slot, in slot order."""
        return {s.name: s.encoder_hash() for s in self.slots}

    def weights_hash(self) -> str:
        """One hash over every slot (equals ``encoder_hash()`` when there is one slot)."""
        return combined_hash(self.weights_hashes())

    def component_module(self, name: str) -> torch.nn.Module:
        """The pipeline component ``name`` (a slot's encoder, ``unet``, ``transformer``, ...)."""
        for s in self.slots:
            if s.name == name:
                return s.text_encoder
        found = getattr(self.pipeline, name, None) if self.pipeline is not None else None
        if isinstance(found, torch.nn.Module):
            return found
        raise DeltaIntegrityError(f"this model has no component {name!r}; it has {', '.join(self.slot_names)}")

    # -- first-slot weights (single-encoder API) ---------------------------------------------------
    def fc2_modules(self) -> dict[str, torch.nn.Linear]:
        """Every layer's editable matrix of the first slot, keyed by its module name inside the encoder."""
        return self.slots[0].fc2_modules()

    def snapshot_fc2(self) -> dict[str, torch.Tensor]:
        """CPU copies of the first slot's editable weights, keyed "<module>.weight"."""
        return self.slots[0].snapshot_fc2()

    def restore_fc2(self, snapshot: dict[str, torch.Tensor]) -> None:
        """Copy a ``snapshot_fc2()`` back into the first slot."""
        self.slots[0].restore_fc2(snapshot)

    def restore_base(self) -> None:
        """Put every slot's editable weights back to what was loaded from disk (undoes all edits)."""
        for s in self.slots:
            s.restore_base()


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
    """The local folder a path, a packaged model's name (``minilm``, engine.packaged_models) or a cached
    hub id refers to, in that order; ModelNotFoundError if there is none."""
    text = str(source).strip()
    if not text:
        raise ModelNotFoundError("no model given; pass --model with a folder or a Hugging Face id")
    path = Path(text).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise ModelFormatError(f"{path} is a file; pass the model's folder (the one holding config.json)")
    packaged = None if isinstance(source, Path) else resolve_packaged(text)  # e.g. "minilm"
    if packaged is not None:
        return packaged
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


def _pipeline_index(folder: Path) -> dict[str, Any]:
    index = _read_json(folder / "model_index.json")
    if not isinstance(index, dict):
        raise ModelFormatError(f"{folder / 'model_index.json'} is not a diffusers model index; re-download the model")
    return index


# ---------------------------------------------------------------------------------------------
# loading


def load_model(
    source: str | Path, device: str = "auto", with_pipeline: bool = True, *,
    readouts: dict[str, Readout] | None = None, dtype: str | None = None,
) -> LoadedModel:
    """Load a pipeline or text-encoder folder (or a cached hub id) offline, onto ``device``.

    ``dtype`` (float32 / float16 / bfloat16; None = as stored) loads the weights directly in that dtype;
    edit math stays fp32 (``keep_editable_fp32``, ``engine.delta.add_low_rank``).

    A pipeline gets one slot per text encoder of its family (``FAMILY_SLOTS``), each with the
    family's readout (``readouts`` overrides some, by slot name); a slot's encoder is the pipeline's
    own object. ``with_pipeline=False`` reads only the encoder and tokenizer subfolders (faster;
    ``pipeline`` is then None).
    """
    folder = resolve_source(source)
    kind = detect_kind(folder)
    dev = resolve_device(device)
    load_kw = load_dtype_kwargs(dtype, dev)
    quiet_hf_logging(diffusers=with_pipeline and kind == "sd-pipeline")  # importing diffusers costs seconds
    pooling = None
    pipeline = None
    family = None
    if kind == "sd-pipeline":
        index = _pipeline_index(folder)
        family = pipeline_family(folder, index)
        names = FAMILY_SLOTS[family]
        for name in names:
            _check_encoder_folder(folder, index, name, family)
        if with_pipeline:
            pipeline = _load_pipeline(folder, **load_kw)
            parts = [(n, getattr(pipeline, n, None), getattr(pipeline, tokenizer_attr(n), None)) for n in names]
            for n, enc, tok in parts:
                if enc is None or tok is None:
                    raise ModelFormatError(f"pipeline {folder} loaded without {n} or its tokenizer")
        else:
            parts = [(n, *_load_pipeline_encoder(folder, index, n, **load_kw)) for n in names]
    else:
        model_folder = _transformer_folder(folder)
        assert model_folder is not None  # detect_kind checked it
        encoder, tokenizer = _load_text_encoder(model_folder)
        if load_kw:  # a plain encoder folder (small) is cast after loading
            encoder.to(load_kw["dtype"])
        pooling = read_pooling(folder)
        parts = [("text_encoder", encoder, tokenizer)]
    (pipeline if pipeline is not None else torch.nn.ModuleList([p[1] for p in parts])).to(dev)
    slots = [make_slot(name, enc, tok, family, pooling, (readouts or {}).get(name)) for name, enc, tok in parts]
    return LoadedModel(source=str(source), path=folder, kind=kind, slots=slots, pipeline=pipeline, device=dev,
                       pooling=pooling, pipeline_family=family, dtype=dtype)


def make_slot(name: str, encoder: torch.nn.Module, tokenizer: Any, family: str | None,
               pooling: tuple[str, bool] | None, readout: Readout | None) -> EncoderSlot:
    from engine.readout import ReadoutError

    encoder.eval()
    encoder.requires_grad_(False)
    fmt = slot_input(family, name)
    limit, readout = fmt.resolve(tokenizer, readout or default_readout(family or "", name))  # Sana's window
    adapter = _adapter_for(encoder, pooling, pad_to=limit, use_mask=fmt.use_mask)
    tokenizer = templated(tokenizer, fmt.template, limit)
    try:
        adapter.set_readout(readout)
    except ReadoutError as exc:
        raise ModelFormatError(f"{name}: {exc}") from None
    keep_editable_fp32(adapter)
    slot = EncoderSlot(name=name, text_encoder=encoder, tokenizer=tokenizer, adapter=adapter,
                       default_depth=default_depth(family, name))
    slot.base_fc2 = slot.snapshot_fc2()
    return slot


def pipeline_family(folder: Path, index: dict[str, Any] | None = None) -> str:
    """sd1 / sd2 / sdxl / sd3 / flux from model_index.json's ``_class_name``; ModelFormatError otherwise."""
    index = index if index is not None else _pipeline_index(folder)
    name = index.get("_class_name")
    family = PIPELINE_CLASSES.get(name) if isinstance(name, str) else None
    if family is None:
        raise ModelFormatError(
            f"pipeline {folder} is a {name!r}; supported pipeline classes: {', '.join(PIPELINE_CLASSES)}"
        )
    if family == "sd1":
        cfg = _read_json(folder / "text_encoder" / "config.json") or {}
        if cfg.get("hidden_act") == "gelu" or cfg.get("hidden_size") == 1024:  # OpenCLIP-H: SD2.x
            family = "sd2"
    return family


def _check_encoder_folder(folder: Path, index: dict[str, Any], name: str, family: str) -> None:
    entry = index.get(name)
    class_name = entry[1] if isinstance(entry, list) and len(entry) == 2 else None
    needs = ", ".join(FAMILY_SLOTS[family])
    if class_name is None or not (folder / name).is_dir():
        raise ModelFormatError(
            f"pipeline {folder} ({family}) has no {name} folder; a {family} pipeline needs {needs}"
        )
    if class_name not in _PIPELINE_ENCODER_CLASSES:
        raise ModelFormatError(
            f"pipeline {folder}: {name} is a {class_name!r}; supported: {', '.join(_PIPELINE_ENCODER_CLASSES)}"
        )
    tok = tokenizer_attr(name)
    if not (folder / tok).is_dir():
        raise ModelFormatError(f"pipeline {folder} ({family}) has no {tok} folder for {name}")
    _require_safetensors(folder / name, f"{name}")


DTYPES = ("float32", "float16", "bfloat16")


def load_dtype_kwargs(dtype: str | None, device: torch.device) -> dict[str, Any]:
    """``{"dtype": torch dtype}`` for from_pretrained ({} for None); EngineError for an unknown dtype or
    one the device cannot run (bf16 on a CUDA GPU without bf16 support)."""
    if dtype is None:
        return {}
    if dtype not in DTYPES:
        raise EngineError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if dtype == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise EngineError(f"{torch.cuda.get_device_name(device)} cannot run bfloat16; use --dtype float16")
    return {"dtype": getattr(torch, dtype)}


def _load_pipeline(folder: Path, **kw: Any) -> Any:
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.from_pretrained(folder, local_files_only=True, use_safetensors=True, **kw)
    except EngineError:
        raise
    except Exception as exc:
        raise ModelFormatError(f"could not load the pipeline in {folder} ({_one_line(exc)})") from None


def load_tokenizer(source: str | Path, slot: str = "text_encoder") -> Any:
    """Only the tokenizer of a pipeline slot or text-encoder folder / cached hub id (offline, fast)."""
    import transformers

    quiet_hf_logging(diffusers=False)
    folder = resolve_source(source)
    fmt = None
    if detect_kind(folder) == "sd-pipeline":
        try:  # the pipeline's template and limit (decoder LMs, PixArt); none for a class we cannot edit
            fmt = slot_input(pipeline_family(folder), slot)
        except ModelFormatError:
            fmt = None
        folder = folder / tokenizer_attr(slot)
    else:
        folder = _transformer_folder(folder) or folder
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise ModelFormatError(f"could not load the tokenizer in {folder} ({_one_line(exc)})") from None
    if fmt is None:
        return tokenizer
    limit, _ = fmt.resolve(tokenizer, default_readout("", slot))
    return templated(tokenizer, fmt.template, limit)


def token_limit(tokenizer: Any, default: int = 77) -> int:
    """The longest input the tokenizer's model takes (CLIP 77, BERT 512); ``default`` when unset."""
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit <= 100_000 else default


def _load_pipeline_encoder(folder: Path, index: dict[str, Any], name: str,
                           **kw: Any) -> tuple[torch.nn.Module, Any]:
    import transformers

    class_name = index[name][1]
    try:
        encoder = getattr(transformers, class_name).from_pretrained(
            folder / name, local_files_only=True, use_safetensors=True, **kw
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder / tokenizer_attr(name), local_files_only=True)
    except Exception as exc:
        raise ModelFormatError(f"could not load {name} of {folder} ({_one_line(exc)})") from None
    return encoder, tokenizer


def _adapter_for(encoder: torch.nn.Module, pooling: tuple[str, bool] | None, *, pad_to: int | None = None,
                 use_mask: bool = True) -> Any:
    from engine.adapters import adapter_for

    if pooling is not None:
        return adapter_for(encoder, pooling=pooling[0], normalize=pooling[1])
    return adapter_for(encoder, pad_to=pad_to, use_mask=use_mask)


_make_slot = make_slot  # the name benchmarks/latency_models.py imports
