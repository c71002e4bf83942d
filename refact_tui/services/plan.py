"""`refact plan`: what a model will need in memory, read from its configs and safetensors headers
without loading a weight.

Per component: parameter count and bytes in the chosen dtype. Per encoder slot: the width of the
editable matrix's input (fc2 / wo / down_proj) and its second moment C (width² float32: edit math stays
fp32 whatever the dtype). Expected peaks (weights + edit state, activations not included) for an edit, a
batch of N, image evaluation and the bench, on the host and on a GPU.

``check_fits`` refuses, in one line, an activity the chosen device has too little free memory for;
``available_memory`` (host MemAvailable, ``torch.cuda.mem_get_info``) is the default source of that
figure, and callers (tests) can pass their own ``MemorySource``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from engine.errors import EngineError, ModelFormatError

DTYPES = {"float32": 4, "float16": 2, "bfloat16": 2}
_HEADER_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
                 "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_FLOATS = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
KEY_TEMPLATES = 9  # context templates per request: keys of one request are 9 x width floats
# host memory a load holds besides the weights (tokenizers, module objects, allocator slack): measured
# 120-150 MiB on loads of SD1's full-size CLIP-L (benchmarks/plan_check.py)
LOAD_OVERHEAD = 128 * 2**20


@dataclass(frozen=True)
class ComponentPlan:
    name: str
    class_name: str
    params: int
    bytes: int          # in the chosen dtype (non-float tensors at their own size)
    stored_dtype: str   # what the files hold ("F32", "BF16", ...; "mixed")
    stored_bytes: int = 0  # the files' tensor bytes (read while converting to another dtype)

    @property
    def converts(self) -> bool:
        return self.stored_bytes != self.bytes


@dataclass(frozen=True)
class SlotPlan:
    slot: str
    layers: int
    width: int          # input width of the editable matrix (fc2 / wo / down_proj)
    out_width: int
    c_bytes: int        # one layer's second moment C: width² float32
    editable_params: int  # every layer's editable matrix together
    keeps_fp32: bool    # T5 / LLM editable matrices stay fp32 under fp16/bf16 (CLIP's fc2 follows the model)


# Seconds per ReFACT edit (100 v* steps, every default slot) on a 2-core x86 CPU, one torch thread:
# SD1's idle measurement times each pipeline's ratio to SD1 measured in the same run (BENCHMARKS.md,
# "Edit latency" and "Edit latency at LLM widths"; the T5 and LLM rows are scaled estimates).
CPU_SD1_EDIT_SECONDS = 11.94
CPU_RATIO_TO_SD1 = {
    "StableDiffusionPipeline": 1.0, "StableDiffusionXLPipeline": 2.34, "StableDiffusion3Pipeline": 465.2,
    "FluxPipeline": 867.6, "Flux2Pipeline": 1125.5, "Lumina2Pipeline": 169.5, "ZImagePipeline": 87.0,
    "CogView4Pipeline": 267.8, "HiDreamImagePipeline": 111.6, "QwenImagePipeline": 461.5,
}


def cpu_edit_seconds(pipeline_class: str | None) -> float | None:
    """The measured-or-scaled seconds per edit on this CPU class, or None where nothing was measured."""
    ratio = CPU_RATIO_TO_SD1.get(pipeline_class or "")
    return None if ratio is None else ratio * CPU_SD1_EDIT_SECONDS


@dataclass(frozen=True)
class MemoryPlan:
    model: str
    dtype: str
    components: list[ComponentPlan]
    slots: list[SlotPlan]
    peaks: dict[str, int] = field(default_factory=dict)  # activity -> bytes of host memory
    device_peaks: dict[str, int] = field(default_factory=dict)  # activity -> bytes on a GPU (weights there)
    pipeline_class: str | None = None  # model_index.json's _class_name (None: a plain encoder folder)
    cpu_edit_seconds: float | None = None  # see CPU_RATIO_TO_SD1

    @property
    def total_bytes(self) -> int:
        return sum(c.bytes for c in self.components)


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """The JSON header of a safetensors file (name -> dtype, shape, offsets); no tensor is read."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ModelFormatError(f"{path} is not a safetensors file (too short)")
        (size,) = struct.unpack("<Q", raw)
        if size > 100 * 1024 * 1024:
            raise ModelFormatError(f"{path} has an implausible safetensors header ({size} bytes)")
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def component_plan(folder: Path, name: str, class_name: str, dtype: str) -> ComponentPlan:
    """Parameter count and bytes of one component folder, from its safetensors headers."""
    params = nbytes = on_disk = 0
    stored: set[str] = set()
    for file in sorted(folder.glob("*.safetensors")):
        for entry in read_safetensors_header(file).values():
            n, kind = _numel(entry["shape"]), entry["dtype"]
            stored.add(kind)
            params += n
            nbytes += n * (DTYPES[dtype] if kind in _FLOATS and dtype else _HEADER_SIZES.get(kind, 4))
            on_disk += n * _HEADER_SIZES.get(kind, 4)
    return ComponentPlan(name, class_name, params, nbytes, stored.pop() if len(stored) == 1 else
                         ("mixed" if stored else "-"), on_disk)


def _text_config(config: dict) -> dict:
    return config.get("text_config") if isinstance(config.get("text_config"), dict) else config


def slot_plan(folder: Path, name: str) -> SlotPlan | None:
    """The editable matrix of a text-encoder folder, from its config.json (None if unknown)."""
    path = folder / "config.json"
    if not path.is_file():
        return None
    cfg = _text_config(json.loads(path.read_text(encoding="utf-8")))
    width = cfg.get("intermediate_size") or cfg.get("d_ff")
    out = cfg.get("hidden_size") or cfg.get("d_model")
    layers = cfg.get("num_hidden_layers") or cfg.get("num_layers")
    if not (width and out and layers):
        return None
    width, out, layers = int(width), int(out), int(layers)
    keeps_fp32 = not str(cfg.get("model_type", "")).startswith("clip")
    return SlotPlan(name, layers, width, out, width * width * 4, layers * width * out, keeps_fp32)


def plan_model(path: str | Path, dtype: str | None = "float32", batch: int = 8) -> MemoryPlan:
    """The memory plan of a pipeline or text-encoder folder in ``dtype`` (None: as the files store it)."""
    if dtype is not None and dtype not in DTYPES:
        raise EngineError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if batch < 1:
        raise EngineError(f"--batch must be at least 1, got {batch}")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise EngineError(f"{folder} is not a model folder; pass --model PATH of a pipeline or text encoder")
    index_file = folder / "model_index.json"
    pipeline_class = None
    if index_file.is_file():
        index = json.loads(index_file.read_text(encoding="utf-8"))
        parts = [(k, str(v[1])) for k, v in index.items() if isinstance(v, list) and len(v) == 2 and v[1]]
        pipeline_class = str(index.get("_class_name") or "") or None
    else:
        parts = [(".", "text-encoder")]
    components, slots = [], []
    for name, cls in parts:
        sub = folder / name
        if not sub.is_dir() or not any(sub.glob("*.safetensors")):
            continue  # tokenizers, schedulers: no weights
        label = "text_encoder" if name == "." else name
        components.append(component_plan(sub, label, cls, dtype))
        if label.startswith("text_encoder"):
            s = slot_plan(sub, label)
            if s is not None:
                slots.append(s)
    if not components:
        raise EngineError(f"{folder} holds no safetensors weights; nothing to plan")
    host, device = _peaks(components, slots, dtype, batch)
    return MemoryPlan(str(path), dtype or "as stored", components, slots, host, device, pipeline_class,
                      cpu_edit_seconds(pipeline_class))


def _peaks(components: list[ComponentPlan], slots: list[SlotPlan], dtype: str | None,
           batch: int) -> tuple[dict[str, int], dict[str, int]]:
    """Weights + edit state per activity, on the host (plus ``LOAD_OVERHEAD``) and on a GPU.

    Loading into another dtype than the files hold keeps one component's file pages resident while its
    copies are made; components load one after another, so the transient is the largest converting
    component's stored bytes, not their sum (measured on full-size SD1: benchmarks/plan_check.py)."""
    texts = [c for c in components if c.name.startswith("text_encoder")]
    text = sum(c.bytes for c in texts)
    everything = sum(c.bytes for c in components)
    convert_text = max((c.stored_bytes for c in texts if c.converts), default=0)
    convert_all = max((c.stored_bytes for c in components if c.converts), default=0)
    size = DTYPES[dtype] if dtype else 4
    # editable matrices kept fp32 under fp16/bf16 (T5 / LLM), and the snapshot of them rollback keeps
    upcast = sum(s.editable_params * (4 - size) for s in slots if s.keeps_fp32)
    snapshot = sum(s.editable_params * (4 if s.keeps_fp32 else size) for s in slots)
    edit_state = sum(s.c_bytes for s in slots)
    keys = sum(batch * KEY_TEMPLATES * s.width * 4 for s in slots)
    encoders = text + upcast + snapshot
    pipeline = everything + upcast + snapshot
    host = {
        "load (host)": pipeline + convert_all,
        "load encoders (host)": encoders + convert_text,
        "edit": encoders + max(convert_text, edit_state),
        f"batch of {batch}": encoders + max(convert_text, edit_state + keys),
        "image eval": pipeline + convert_all,
        "bench": pipeline + max(convert_all, edit_state),
    }
    host = {k: v + LOAD_OVERHEAD for k, v in host.items()}
    # on a GPU: the weights moved there (the load and its conversion happen on the host; the rollback
    # snapshot stays on the host) plus the edit state
    device = {
        "edit": text + upcast + edit_state,
        f"batch of {batch}": text + upcast + edit_state + keys,
        "image eval": everything + upcast,
        "bench": everything + upcast + edit_state,
    }
    return host, device


# activity names of a plan's peaks, per command
EDIT, IMAGE_EVAL, BENCH = "edit", "image eval", "bench"


def batch_activity(batch: int) -> str:
    """The peak's name for a batch of ``batch`` requests."""
    return f"batch of {batch}"


# free bytes on a device ("cpu", "cuda", "cuda:N"); None when unknown (nothing is then refused)
MemorySource = Callable[[str], int | None]


def available_memory(device: str) -> int | None:
    """Free memory of ``device`` ("cpu", "cuda", "cuda:N"): ``engine.admission.free_memory``, the one
    reading the second-moment admission uses too."""
    from engine.admission import free_memory

    return free_memory(device)


def size_text(n: float) -> str:
    """Bytes as B / KiB / MiB / GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


class MemoryPlanError(EngineError):
    """The chosen device has too little free memory for what a command is about to load."""


def check_fits(plan: MemoryPlan, activity: str, device: str, memory: MemorySource | None = None) -> None:
    """Refuse in one line (MemoryPlanError) when ``device`` has less free memory than ``plan`` expects
    ``activity`` to peak at: host memory for cpu, GPU memory for cuda. Unknown free memory passes."""
    on_gpu = device.startswith("cuda")
    need = (plan.device_peaks if on_gpu else plan.peaks).get(activity)
    free = (memory or available_memory)(device)
    if need is None or free is None or need <= free:
        return
    where = f"GPU memory on {device}" if on_gpu else "host memory"
    lighter = " load it in bfloat16 or float16 (--dtype)," if plan.dtype in ("float32", "as stored") else ""
    raise MemoryPlanError(
        f"{activity} of {plan.model} in {plan.dtype} needs about {size_text(need)} of {where} (`refact plan`) but "
        f"only {size_text(free)} is free;{lighter} free memory or pick another --device")
