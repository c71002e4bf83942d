"""`run_bench` (text space) on an existing workspace under `accelerate launch`; the main process writes
its run id and rows as JSON.

Usage: dist_bench_script.py WORKSPACE ROWS_FILE OUT_JSON
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from worker_helpers import FAST  # noqa: E402

from engine.distributed import is_main_process, process_info  # noqa: E402

HP = {"layer": FAST.layer, "lr": FAST.lr, "max_steps": FAST.max_steps, "prob_threshold": FAST.prob_threshold}


def run(root: str, rows: str) -> dict:
    """The stored run's rows (scores as JSON) and its run id, single-threaded."""
    from refact_tui.services.bench import run_bench
    from refact_tui.services.bench_config import BenchOptions
    from refact_tui.services.bench_scores import to_json
    from refact_tui.services.workspace import Workspace

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with Workspace.open(Path(root)) as ws:
            report = run_bench(ws, BenchOptions(file=rows, text_only=True, device="cpu", hparams=HP))
    finally:
        torch.set_num_threads(threads)
    return {"world": process_info()[1], "run_id": report.run_id, "notes": report.notes,
            "rows": [[r.index, r.error, {s: to_json(v) for s, v in r.scores.items()}] for r in report.rows]}


if __name__ == "__main__":
    result = run(sys.argv[1], sys.argv[2])
    if is_main_process():
        Path(sys.argv[3]).write_text(json.dumps(result))
