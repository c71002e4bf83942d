"""TUI latency with a long queue and a busy worker: screen switches and cursor moves.

Builds a workspace (fake base model, no weights) with ``--queued`` queued jobs, a few applied edits
and one running job, then runs the TUI headless (Textual's test driver, 120x40) while a thread plays
the worker: it appends an optimization step every ``--step-ms`` and renews the worker lease, the
writes a running edit makes. Measures, over ``--rounds`` rounds:

* switch_shown: pressing a screen key (1..5) until the key is handled and the screen is up (with what
  it showed when last visited);
* switch_fresh: the same until that screen has redrawn from the store;
* cursor: pressing down / up on the Queue table until the key is handled (the detail panel follows);
* poll: one store poll of the Queue screen while the worker writes.

The worker's own CPU load (the torch optimization) is not simulated; on a 2-core box it competes
with the UI for a core. Prints a table and a final JSON line, and rewrites its section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

from report import replace_section  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

SECTION_START = "<!-- bench:tui_latency -->"
SECTION_END = "<!-- /bench:tui_latency -->"
TARGET_S = 0.3


def build(root: Path, queued: int) -> int:
    """A workspace with ``queued`` queued jobs, 3 applied edits and a running job; returns its id."""
    import store.jobs
    from engine.events import StepEvent
    from engine.methods.refact.hparams import ReFACTHParams
    from engine.request import EditRequest
    from refact_tui.services.workspace import BaseModelInfo, create_workspace
    from store.db import transaction
    from store.edits import record_edit
    from store.leases import acquire_lease
    from store.steps import StepWriter

    base = BaseModelInfo("tiny-sd", "/models/tiny-sd", "sd-pipeline", "clip", "ab" * 32, {"num_layers": 12})
    ws = create_workspace(root, base)
    hid = ws.history().id
    hp = ReFACTHParams(layer=1, max_steps=100000, prob_threshold=0.99)
    acquire_lease(ws.db, "worker", "bench:1:x", 1, "bench-host")
    for k in range(3):
        req = EditRequest(prompt=f"The leader {k}", source=f"old {k}", target=f"new {k}")
        job = store.jobs.enqueue(ws.db, hid, req, hp)
        store.jobs.claim_next(ws.db, "bench:1:x")
        with transaction(ws.db):
            edit = record_edit(ws.db, history_id=hid, job_id=job.id, request=req, hparams=hp, status="applied",
                               layer=1, module="m", delta_path=f"deltas/{k}.safetensors", delta_sha256="0" * 64,
                               weights_hash=f"{k:064x}", steps_run=10, early_stopped=True, p_target=0.99,
                               delta_norm=0.1, division_factor=0.2, timings={"total_s": 1.0}, device="cpu")
            store.jobs.finish_job(ws.db, job.id, "done", edit_id=edit.id)
    running = store.jobs.enqueue(ws.db, hid, EditRequest(prompt="The running one", source="a", target="b"), hp)
    claimed = store.jobs.claim_next(ws.db, "bench:1:x")
    for i in range(queued):
        store.jobs.enqueue(ws.db, hid, EditRequest(prompt=f"The queued request number {i}", source=f"src {i}",
                                                   target=f"tgt {i}"), hp)
    writer = StepWriter(ws.db_path, running.id, claimed.attempts)
    writer.add(StepEvent(step=0, loss=3.0, nll=3.0, wd=0.0, p_target=0.05, delta_norm=0.0, elapsed=0.1))
    writer.close()
    ws.close()
    return running.id


def play_worker(db_path: Path, job_id: int, step_ms: float, stop: threading.Event) -> None:
    """Append steps and renew the lease like a running edit does."""
    from engine.events import StepEvent
    from store.db import open_db
    from store.leases import renew_lease
    from store.steps import StepWriter

    db = open_db(db_path)
    writer = StepWriter(db_path, job_id, 1)
    i = 1
    while not stop.is_set():
        p = 1 - 0.95 * math.exp(-i / 200)
        writer.add(StepEvent(step=i, loss=-math.log(p), nll=-math.log(p), wd=0.0, p_target=p, delta_norm=0.001 * i,
                             elapsed=i * step_ms / 1000))
        if i % 10 == 0:
            renew_lease(db, "worker", "bench:1:x")
        i += 1
        time.sleep(step_ms / 1000)
    writer.close()
    db.close()


async def measure(root: Path, rounds: int) -> dict[str, list[float]]:
    from refact_tui.tui.app import RefactApp
    from refact_tui.tui.screens.base import DashboardScreen
    from refact_tui.tui.widgets.queue_table import QueueTable

    drawn: dict[int, float] = {}  # screen -> when it last finished a redraw
    out: dict[str, list[float]] = {"switch_shown": [], "switch_fresh": [], "cursor": [], "poll": []}
    screens = {cls: cls.draw for cls in DashboardScreen.__subclasses__()}
    for cls, fn in screens.items():
        def wrap(self, data, _fn=fn):
            _fn(self, data)
            drawn[id(self)] = time.perf_counter()
        cls.draw = wrap
    try:
        app = RefactApp(root)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause(0.5)
            for _ in range(rounds):
                for key in ("2", "3", "4", "5", "1"):
                    t0 = time.perf_counter()
                    await pilot.press(key)
                    out["switch_shown"].append(time.perf_counter() - t0)
                    while True:
                        screen = app.screen
                        if drawn.get(id(screen), 0) > t0:
                            break
                        if time.perf_counter() - t0 > 10:
                            raise TimeoutError(f"screen {key} never redrew")
                        await asyncio.sleep(0.002)
                    out["switch_fresh"].append(drawn[id(screen)] - t0)
                table = app.screen.query_one(QueueTable)
                table.focus()
                for key in ("down",) * 5 + ("up",) * 5:
                    t0 = time.perf_counter()
                    await pilot.press(key)
                    out["cursor"].append(time.perf_counter() - t0)
                await app.settled()
                app.poller.force()
                t0 = time.perf_counter()
                app.poll()  # the UI thread's share: change check and starting the reader thread
                out["poll"].append(time.perf_counter() - t0)
                await pilot.pause(0.05)
            assert table.row_count > 0
    finally:
        for cls, fn in screens.items():
            cls.draw = fn
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queued", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--step-ms", type=float, default=20.0, help="one optimization step every N ms")
    ap.add_argument("--write", type=Path, default=Path(__file__).resolve().parent.parent / "BENCHMARKS.md")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ws"
        job_id = build(root, args.queued)
        stop = threading.Event()
        worker = threading.Thread(target=play_worker, args=(root / "refact.db", job_id, args.step_ms, stop))
        worker.start()
        try:
            times = asyncio.run(measure(root, args.rounds))
        finally:
            stop.set()
            worker.join()
    rows = {k: {"n": len(v), "median_s": statistics.median(v), "max_s": max(v)} for k, v in times.items()}
    print(f"{'what':<13} {'n':>4} {'median s':>9} {'max s':>7}")
    for k, r in rows.items():
        print(f"{k:<13} {r['n']:>4} {r['median_s']:>9.3f} {r['max_s']:>7.3f}")
    load = os.getloadavg()[0]
    summary = {"queued": args.queued, "step_ms": args.step_ms, "rounds": args.rounds, "load_avg_1m": load,
               "target_s": TARGET_S, "ok": all(r["max_s"] < TARGET_S for k, r in rows.items() if k != "poll")}
    if not args.no_write:
        lines = [SECTION_START, "## TUI latency (`benchmarks/tui_latency.py`)", "",
                 f"{date.today()}, {platform.processor() or platform.machine()}, Python {sys.version.split()[0]}: "
                 f"{args.queued} queued jobs, a simulated worker writing a step every {args.step_ms:g} ms "
                 f"(its torch load not simulated), Textual headless at 120x40, {args.rounds} rounds, "
                 f"{os.cpu_count()} cores, 1-minute load average {load:.1f} at the end (other processes share "
                 f"the box). Target: every switch and cursor move under {TARGET_S} s.", "",
                 "| what | n | median s | max s |", "|---|---|---|---|"]
        lines += [f"| {k} | {r['n']} | {r['median_s']:.3f} | {r['max_s']:.3f} |" for k, r in rows.items()]
        lines += ["", "`switch_shown`: screen key until the screen is up; `switch_fresh`: until it redrew from "
                  "the store (the first visit of a screen includes building it); `cursor`: down/up on the Queue "
                  "table; `poll`: the UI thread's share of one forced store poll (the 500 jobs are read on a reader thread; the table diff runs when they arrive).",
                  SECTION_END]
        replace_section(args.write, "\n".join(lines) + "\n", SECTION_START, SECTION_END)
    print(json.dumps({"bench": "tui_latency", **summary, "rows": rows}))


if __name__ == "__main__":
    main()
