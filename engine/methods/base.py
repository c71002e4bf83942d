"""The edit-method contract shared by the worker, the bench, `refact layers` and the history.

``EditMethod.compute(model, requests, hparams, context) -> EditOutcome``: 1..N requests over the
slots planned for them, one delta, never touching the weights; ``EditOutcome.insert`` applies it.
``check`` refuses (one line, MethodRefusedError) a model the method cannot edit; every method has
its own frozen hyperparameter dataclass (``hparams_from_dict`` / ``default_hparams``).
``EditContext`` carries what a run supplies besides the hyperparameters: the second-moment cache,
progress and step callbacks, the stop check, the earlier requests to protect.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, Union

import torch

from engine.covariance import SecondMomentStore
from engine.delta import component_module
from engine.events import ProgressCallback, StepEvent, StopCheck
from engine.methods.errors import MethodRefusedError
from engine.methods.outcome import EditOutcome
from engine.request import EditRequest

if TYPE_CHECKING:
    from engine.methods.refact.batch import BatchInsertConfig

# (slot name, request position, step event) for every v* step of every slot and request
OutcomeStepCallback = Callable[[str, int, StepEvent], None]
# Earlier edits to protect (--preserve): per slot name, or one sequence for every slot (one-slot models).
PreserveRequests = Union[Sequence[EditRequest], Mapping[str, Sequence[EditRequest]]]


@dataclass
class EditContext:
    """What a run supplies to ``EditMethod.compute`` besides the model, requests and hyperparameters.

    ``insertion``: ReFACT only, how N requests go into the weights as one delta (joint, spread, ...;
    None: one request over every slot, or the rank-one sum for several); ``batch_size`` caps the
    requests per padded batch of the vectorised v*. Closed-form methods ignore what they do not use."""

    second_moments: SecondMomentStore | None = None
    corpus: Path | None = None
    n_samples: int | None = None
    progress: ProgressCallback | None = None
    on_step: OutcomeStepCallback | None = None
    should_stop: StopCheck | None = None
    preserve: PreserveRequests = ()
    insertion: "BatchInsertConfig | None" = None
    batch_size: int | None = None

    def step(self, slot: str, request: int, event: StepEvent) -> None:
        if self.on_step is not None:
            self.on_step(slot, request, event)


class EditMethod:
    """Base class: subclasses set ``name`` and ``component`` and implement the methods below."""

    name: str = ""
    component: str = ""          # the pipeline component the deltas edit
    needs_pipeline = False       # edits a part of the pipeline besides its text encoders (the caller loads it)
    vectorised = False           # ``compute_each`` shares work between the requests

    def default_hparams(self, model: Any) -> Any:
        raise NotImplementedError

    def hparams_from_dict(self, data: Mapping[str, Any] | None, model: Any = None) -> Any:
        raise NotImplementedError

    def check(self, model: Any) -> None:
        """Raise MethodRefusedError (one line) when the method cannot edit ``model``."""

    def check_hparams(self, model: Any, hparams: Any) -> None:
        """Raise a one-line error when ``hparams`` cannot edit ``model`` (e.g. a layer it lacks)."""

    def compute(self, model: Any, requests: Sequence[EditRequest], hparams: Any,
                context: EditContext | None = None) -> EditOutcome:
        """One edit of ``requests`` (1..N); never modifies weights."""
        raise NotImplementedError

    def compute_each(self, model: Any, requests: Sequence[EditRequest], hparams: Any,
                     context: EditContext | None = None) -> list[EditOutcome]:
        """One independent edit per request, each as ``compute`` of that request alone (a method may
        share work between them, e.g. ReFACT's vectorised v*)."""
        return [self.compute(model, [r], hparams, context) for r in requests]

    def target_modules(self, model: Any, hparams: Any) -> dict[str, torch.nn.Module]:
        """"component:module" -> every Linear this method may edit (hashed before every bench row)."""
        raise NotImplementedError

    def weights_hash(self, model: Any, hparams: Any) -> str:
        """sha256 over the weights this method may edit (cheap: only those matrices)."""
        h = hashlib.sha256()
        for name, mod in sorted(self.target_modules(model, hparams).items()):
            w = mod.weight.detach().to("cpu").contiguous()
            h.update(name.encode())
            h.update(str(w.dtype).encode())
            h.update(w.numpy().tobytes() if w.dtype != torch.bfloat16 else w.float().numpy().tobytes())
        return h.hexdigest()


def pipeline_component(model: Any, component: str, method: str) -> torch.nn.Module:
    """``model.pipeline.<component>``, or MethodRefusedError naming what the model has instead."""
    pipe = getattr(model, "pipeline", None)
    if pipe is None:
        raise MethodRefusedError(
            f"{method} edits a diffusion pipeline's {component}; this model is a text encoder only "
            "(use --method refact or a pipeline folder)"
        )
    found = getattr(pipe, component, None)
    if not isinstance(found, torch.nn.Module):
        has = [n for n in ("unet", "transformer", "prior") if isinstance(getattr(pipe, n, None), torch.nn.Module)]
        where = f"it has a {has[0]}, not a {component}" if has else f"it has no {component}"
        raise MethodRefusedError(
            f"{method} edits a {component}'s cross-attention and cannot edit {type(pipe).__name__}: {where}; "
            "use --method refact"
        )
    return found


def module_of(model: Any, component: str, name: str) -> torch.nn.Module:
    return component_module(model, component).get_submodule(name)
