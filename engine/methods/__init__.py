"""Edit methods behind one contract, and their registry.

``get_method(name)`` returns an ``EditMethod`` (engine.methods.base): ReFACT (``refact/``, the text
encoder's fc2) or TIME / UCE (``closed_form/``, the UNet's cross-attention). Every method turns 1..N
requests into an ``EditOutcome`` (engine.methods.outcome) holding one ``engine.delta.EditDelta`` that
is stored, applied, reverted, exported and hashed like any other delta.

The registry names each implementation by module: implementations import ``base`` (never this
package's registry), and load on first use, since they import torch while the store, the queue
and the CLI import this package only for method names and ReFACT's hyperparameters.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from engine.methods.errors import MethodError, MethodRefusedError

if TYPE_CHECKING:
    from engine.methods.base import EditMethod

# name -> (module, class) of its implementation
REGISTRY: dict[str, tuple[str, str]] = {
    "refact": ("engine.methods.refact.method", "ReFACTMethod"),
    "time": ("engine.methods.closed_form.time", "TimeMethod"),
    "uce": ("engine.methods.closed_form.uce", "UCEMethod"),
}
METHODS = tuple(REGISTRY)


def get_method(name: str) -> "EditMethod":
    """The method called ``name`` (refact, time or uce); MethodError for anything else."""
    key = (name or "").strip().lower()
    if key not in REGISTRY:
        raise MethodError(f"unknown edit method {name!r}; use one of {', '.join(METHODS)}")
    module, cls = REGISTRY[key]
    return getattr(import_module(module), cls)()


__all__ = ["METHODS", "REGISTRY", "MethodError", "MethodRefusedError", "get_method"]
