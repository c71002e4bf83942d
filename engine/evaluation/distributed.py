"""The evaluation's name for the shared process-sharding helpers (``engine.distributed``): image
batches are cut before sharding, so results are identical for 1 or N processes."""

from __future__ import annotations

from engine.distributed import (  # noqa: F401 - re-exported API
    eval_device,
    from_main,
    is_distributed,
    is_main_process,
    process_device,
    process_info,
    run_sharded,
    wait_for_everyone,
)

__all__ = ["eval_device", "from_main", "is_distributed", "is_main_process", "process_device", "process_info",
           "run_sharded", "wait_for_everyone"]
