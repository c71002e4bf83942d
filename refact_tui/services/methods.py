"""Edit methods in the queue and the history: which method a request uses, and the worker's hooks.

A request that names no method is a ReFACT edit. ``with_method`` tags a request for the queue
("method" and "method_hparams" in its ``extra``); the queue stores them in the jobs' ``method`` and
``method_hparams`` columns, which the worker and the edits read from then on. The worker, the bench and
`refact layers` compute every edit with ``compute_outcome`` (the method contract) and insert it with
``insert_outcome``; none of them looks at which method produced it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from engine.methods import MethodError, MethodRefusedError, get_method
from engine.request import EditRequest
from refact_tui.services.working_model import ensure_pipeline, forget_edited, note_edited

if TYPE_CHECKING:  # annotations only: the queue imports this module without loading torch
    from engine.methods.base import EditContext
    from engine.methods.outcome import EditOutcome

METHOD_KEY = "method"
HPARAMS_KEY = "method_hparams"


def method_of(request: EditRequest) -> str:
    """The request's edit method ("refact" unless it names another)."""
    return (request.extra or {}).get(METHOD_KEY, "refact")


def with_method(request: EditRequest, method: str, hparams: Mapping[str, Any] | None = None) -> EditRequest:
    """``request`` tagged with ``method`` and its full hyperparameters (validated; MethodError if bad)."""
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


def compute_outcome(model, requests: Sequence[EditRequest], hparams: Any, context: EditContext, *,
                    method: str = "refact", method_hparams: Mapping[str, Any] | None = None) -> EditOutcome:
    """The edit of a job (one request) or a batch (several, ReFACT) on the working model, through its
    method's contract: loads the pipeline when the method edits more than the text encoders, checks the
    model, computes. ``hparams`` are ReFACT's; another method runs with ``method_hparams`` (the job's
    columns). The weights are unchanged afterwards."""
    m = get_method(method)
    if m.needs_pipeline:
        ensure_pipeline(model)
    m.check(model)
    own = hparams if m.name == "refact" else m.hparams_from_dict(method_hparams)
    return m.compute(model, list(requests), own, context)


def insert_outcome(model, outcome: EditOutcome) -> Callable[[], None]:
    """``outcome.insert(model)`` (ReFACT: W k_e == v* checked per slot; refused with every matrix
    restored) plus the working model's record of matrices edited outside the text encoders (for the
    weights hash). Returns the bit-exact undo of both."""
    undo = outcome.insert(model)
    added = note_edited(model, outcome.delta)

    def undo_all() -> None:
        undo()
        forget_edited(model, added)

    return undo_all
