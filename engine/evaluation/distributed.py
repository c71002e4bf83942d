"""Scale-out under Hugging Face accelerate (``accelerate launch -m refact_tui eval ...``).

Work is cut into fixed batches first and the batches are sharded across processes with
``PartialState.split_between_processes``. Every item carries its own seed, and a batch holds the
same items whatever the world size, so results are identical for 1 or N processes. Results are
collected with ``gather_object``; only the main process writes SQLite (callers check
``is_main_process()``).
"""

from __future__ import annotations

import os
from typing import Callable, Sequence, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def is_distributed() -> bool:
    """True when launched with more than one process (accelerate/torchrun set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _state():
    from accelerate import PartialState

    # Without CUDA, accelerate only forms a multi-process CPU group (gloo) when asked for the CPU.
    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    return _state().is_main_process if is_distributed() else True


def process_info() -> tuple[int, int]:
    """(rank, world size)."""
    if not is_distributed():
        return 0, 1
    s = _state()
    return s.process_index, s.num_processes


def eval_device(spec: str = "auto") -> torch.device:
    """The device this process should use: accelerate's per-process device when distributed."""
    if is_distributed():
        dev = _state().device
        return torch.device("cpu") if dev.type == "cpu" else dev
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def run_sharded(batches: Sequence[T], fn: Callable[[T], R]) -> list[R]:
    """``[fn(b) for b in batches]``, computed across processes; every process gets the full,
    ordered list back."""
    if not is_distributed():
        return [fn(b) for b in batches]
    from accelerate.utils import gather_object

    indexed = list(enumerate(batches))
    with _state().split_between_processes(indexed) as shard:
        local = [(i, fn(b)) for i, b in shard]
    gathered = gather_object(local)
    by_index = dict(gathered)
    if len(by_index) != len(batches):
        raise RuntimeError(f"gathered {len(by_index)} of {len(batches)} batches; a process failed")
    return [by_index[i] for i in range(len(batches))]


def wait_for_everyone() -> None:
    if is_distributed():
        _state().wait_for_everyone()
