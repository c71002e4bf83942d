"""Edit methods in the queue and the history: which method a request uses, and the worker's hooks.

A request that names no method is a ReFACT edit (every existing job and edit). Another method is
recorded in ``EditRequest.extra`` ("method" and "method_hparams", the full hyperparameters as JSON),
so jobs, edits and histories of mixed methods need no schema change. The worker asks
``compute_method_edit`` for such a job and commits the result like a ReFACT edit.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import torch

from engine.request import EditRequest
from refact_tui.services.state import TEXT_COMPONENTS  # the components ReFACT edits

METHOD_KEY = "method"
HPARAMS_KEY = "method_hparams"


def method_of(request: EditRequest) -> str:
    """The request's edit method ("refact" unless it names another)."""
    return (request.extra or {}).get(METHOD_KEY, "refact")


def with_method(request: EditRequest, method: str, hparams: Mapping[str, Any] | None = None) -> EditRequest:
    """``request`` tagged with ``method`` and its full hyperparameters (validated; MethodError if bad)."""
    from engine.methods import MethodError, get_method

    m = get_method(method)
    if m.name == "refact":
        if hparams:
            raise MethodError("ReFACT hyperparameters go in the usual options (--layer, --lr, ...), not --hp")
        return request
    h = m.hparams_from_dict(hparams)
    extra = {**(request.extra or {}), METHOD_KEY: m.name, HPARAMS_KEY: json.dumps(h.to_dict(), sort_keys=True)}
    return replace(request, extra=extra)


def check_method_for_base(method: str, kind: str, path: str) -> None:
    """Refuse at queue time (MethodRefusedError, one line) a method that cannot edit the base model,
    judged from its folder without loading it: a UNet method on a bare text encoder or on a pipeline
    whose model_index.json lists no UNet (FLUX, SD3). A folder that cannot be read is let through
    (the worker refuses it when it loads the model)."""
    from pathlib import Path

    from engine.methods import MethodRefusedError, get_method

    m = get_method(method)
    if m.name == "refact":
        return
    label = getattr(m, "label", m.name)
    if kind != "sd-pipeline":
        raise MethodRefusedError(f"{label} edits a diffusion pipeline's {m.component}; this workspace's model is a "
                                 "text encoder only (use --method refact or a pipeline folder)")
    try:
        index = json.loads((Path(path) / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(index, dict) or m.component in index:
        return
    has = [n for n in ("transformer", "prior") if n in index]
    where = f"it has a {has[0]}, not a {m.component}" if has else f"it has no {m.component}"
    raise MethodRefusedError(f"{label} edits a {m.component}'s cross-attention and cannot edit "
                             f"{index.get('_class_name', 'this pipeline')}: {where}; use --method refact")


def method_hparams_of(request: EditRequest) -> dict[str, Any] | None:
    """The method hyperparameters a request carries in ``extra`` (None when it names none); MethodError
    when they are not a JSON object."""
    from engine.methods import MethodError

    raw = (request.extra or {}).get(HPARAMS_KEY)
    if raw in (None, ""):
        return None
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise MethodError(f"{HPARAMS_KEY} is not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise MethodError(f"{HPARAMS_KEY} must be a JSON object of hyperparameters")
    return value


def needs_pipeline(deltas) -> bool:
    """True when a delta edits something besides a text encoder (e.g. the UNet)."""
    return any(c not in TEXT_COMPONENTS for d in deltas for c in d.components)


def ensure_pipeline(model) -> None:
    """Give a text-encoder-only LoadedModel of a pipeline folder its pipeline, sharing its encoder."""
    if getattr(model, "pipeline", None) is not None or model.kind != "sd-pipeline":
        return
    from diffusers import DiffusionPipeline

    from engine.offline import quiet_hf_logging

    quiet_hf_logging()
    pipe = DiffusionPipeline.from_pretrained(model.path, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                             local_files_only=True, use_safetensors=True)
    pipe.to(model.device)
    model.pipeline = pipe


@dataclass
class MethodEdit:
    """A non-ReFACT edit as the worker records it (same fields as ReFACT's EditResult that it reads)."""

    delta: Any
    method: str
    p_target: float               # the cross-attention proxy's P(target) of the edit prompt
    seconds: float
    steps_run: int = 0
    early_stopped: bool = False
    delta_norm: float = 0.0
    division_factor: float = 1.0
    timings: Any = None
    layer: int = -1
    module: str = ""
    numbers: dict[str, float] = field(default_factory=dict)


def compute_method_edit(model, request: EditRequest) -> MethodEdit:
    """The delta of a TIME / UCE request on the working model (weights unchanged afterwards)."""
    from engine.evaluation.cross_attn import cross_attn_scores, frozen_kv, request_texts
    from engine.methods import applied, get_method
    from engine.refact import EditTimings

    m = get_method(method_of(request))
    ensure_pipeline(model)
    m.check(model)
    h = m.hparams_from_dict(json.loads((request.extra or {}).get(HPARAMS_KEY) or "{}"))
    t0 = time.perf_counter()
    res = m.compute(model, request, h)
    frozen = frozen_kv(model)
    frozen.get(request_texts(request))
    with applied(model, res.delta):
        p = float(cross_attn_scores(model, frozen, request).efficacy[0, 0, 1])
    seconds = time.perf_counter() - t0
    norm = math.sqrt(sum(float(u.matrix().pow(2).sum()) for u in res.delta.updates))
    return MethodEdit(res.delta, m.name, p, seconds, delta_norm=norm,
                      timings=EditTimings(insert_s=res.seconds, total_s=seconds),
                      module=f"{m.component}: {len(res.delta.updates)} cross-attention matrices",
                      numbers=res.numbers)


def insert_result(model, result) -> Callable[[], None]:
    """Apply a computed edit to the working model; returns the bit-exact undo. ReFACT's goes through
    engine.insertion.insert (W k_e == v* checked); another method's delta is applied as is."""
    if isinstance(result, MethodEdit):
        from engine.methods import WeightSnapshot
        from refact_tui.services.state import apply_delta, forget_edited

        snap = WeightSnapshot(model, result.delta)
        added = apply_delta(model, result.delta)  # the recorded weights hash now covers these matrices

        def undo_method() -> None:
            snap.restore()
            forget_edited(model, added)

        return undo_method
    if hasattr(result, "edits"):  # a multi-slot ReFACT edit: W k_e == v* checked per slot
        from engine.slot_edit import insert_model_edit, slot_list

        by_name = {getattr(s, "component", "text_encoder"): s for s in slot_list(model)}
        weights = [by_name[e.slot].adapter.fc2(e.layer).weight for e in result.edits]
        backups = [w.detach().clone() for w in weights]
        insert_model_edit(model, result)

        def undo_all() -> None:
            with torch.no_grad():
                for w, b in zip(weights, backups):
                    w.copy_(b)

        return undo_all
    from engine.insertion import insert

    weight = model.adapter.fc2(result.delta.layer).weight
    backup = weight.detach().clone()
    insert(model.adapter, result.delta, result.tensors["k_e"], result.tensors["v_star"])

    def undo() -> None:
        with torch.no_grad():
            weight.copy_(backup)

    return undo


def edit_location(result) -> tuple[int, str]:
    """(layer, module) recorded for an edit."""
    if isinstance(result, MethodEdit) or hasattr(result, "edits"):  # hasattr: a multi-slot ReFACT edit
        return result.layer, result.module
    return result.delta.layer, result.delta.module
