"""Scale-out under Hugging Face accelerate (``accelerate launch -m refact_tui ...``): one module for
every sharded computation (image evaluation, the vectorised v* of a batch, bench rows).

The rule that keeps results bit-identical for 1 or N processes: the work is cut into units that do
not depend on the world size (image batches, v* chunks, bench rows) BEFORE it is sharded with
``PartialState.split_between_processes``; each unit is computed whole by one process and the results
are collected in unit order with ``gather_object``. Every process gets the full list back. Only the
main process writes SQLite (callers check ``is_main_process()`` or use ``from_main``).
"""

from __future__ import annotations

import os
from typing import Callable, Sequence, TypeVar

import torch

from engine.errors import EngineError

T = TypeVar("T")
R = TypeVar("R")


class ShardingError(EngineError):
    """The launch cannot share the work (e.g. more processes than requests); nothing was computed."""


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


def process_device(spec: str = "auto") -> torch.device:
    """The device this process should use: accelerate's per-process device when distributed."""
    if is_distributed():
        dev = _state().device
        return torch.device("cpu") if dev.type == "cpu" else dev
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


eval_device = process_device  # the name the evaluation code has always used


def require_work_for_all(n_items: int, what: str) -> None:
    """ShardingError (one line) when ``n_items`` cannot give every launched process at least one."""
    world = process_info()[1]
    if world > n_items:
        raise ShardingError(f"{world} processes were launched for {n_items} {what}; launch at most {n_items} "
                            f"process(es) (accelerate launch --num_processes) or give at least {world} {what}")


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


def from_main(fn: Callable[[], R]) -> R:
    """``fn()`` run on the main process only; every process gets its (picklable) result, or raises
    the exception it raised (so no process is left waiting)."""
    if not is_distributed():
        return fn()
    from accelerate.utils import broadcast_object_list

    box: list = [None]
    if is_main_process():
        try:
            box = [(True, fn())]
        except Exception as exc:  # noqa: BLE001 - re-raised on every process below
            box = [(False, exc)]
    broadcast_object_list(box, from_process=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def wait_for_everyone() -> None:
    if is_distributed():
        _state().wait_for_everyone()
