"""Edit methods behind one interface: ReFACT (text encoder), TIME and UCE (UNet cross-attention).

``get_method(name)`` returns an ``EditMethod``; every method turns an ``EditRequest`` into an
``engine.delta.EditDelta`` (low-rank updates of named matrices) that is stored, applied, reverted,
exported and hashed like any other delta.
"""

from engine.methods.base import (
    METHODS,
    EditMethod,
    MethodError,
    MethodRefusedError,
    MethodResult,
    WeightSnapshot,
    applied,
    get_method,
)

__all__ = [
    "METHODS",
    "EditMethod",
    "MethodError",
    "MethodRefusedError",
    "MethodResult",
    "WeightSnapshot",
    "applied",
    "get_method",
]
