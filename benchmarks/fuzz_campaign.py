"""Fuzz campaign: 1,000 hostile cases (by default) over CLI hyperparameter values, request files
imported through the queue service, and apply-deltas manifests.

Every case must end as "accepted" or "refused" (a one-line user error); a traceback or anything
half-written (jobs from a refused import, a job count that disagrees with the report) is a failure.
Uses the targets of tests/fuzz_targets.py (the bounded CI suite is tests/test_fuzz_hostile.py).
Prints a table and a final JSON line, and rewrites its section of BENCHMARKS.md.

    .venv/bin/python benchmarks/fuzz_campaign.py [--cases 1000] [--seed 0] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from report import replace_section  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import fuzz_targets as ft  # noqa: E402

SECTION_START = "<!-- fuzz-campaign:start -->"
SECTION_END = "<!-- fuzz-campaign:end -->"
SHARES = {"hparams": 0.3, "request_files": 0.4, "manifests": 0.3}


def run_target(name: str, n: int, strategy, run_one, rng_seed: int) -> dict:
    counts: Counter = Counter()
    failures: list[str] = []
    t0 = time.perf_counter()

    @seed(rng_seed)
    @settings(max_examples=n, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def body(case) -> None:
        try:
            counts[run_one(case)] += 1
        except Exception as exc:  # noqa: BLE001 - every crash is counted, not shrunk
            counts["failed"] += 1
            if len(failures) < 5:
                failures.append(f"{type(exc).__name__}: {str(exc)[:200]}")

    body()
    return {"target": name, "cases": sum(counts.values()), "accepted": counts["accepted"],
            "refused": counts["refused"], "failed": counts["failed"], "seconds": time.perf_counter() - t0,
            "failures": failures}


def write_section(result: dict, rows: list[dict], path: Path) -> None:
    lines = [SECTION_START, "## Fuzz campaign (`benchmarks/fuzz_campaign.py`)", "",
             f"- date: {result['date']}; device: cpu ({platform.machine()}, {os.cpu_count()} cores, shared); "
             f"command: `{result['command']}`",
             "- a case fails on a traceback or on anything half-written; a refusal is a one-line error", "",
             "| target | cases | accepted | refused | failed | seconds |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['target']} | {r['cases']} | {r['accepted']} | {r['refused']} | {r['failed']} | "
              f"{r['seconds']:.1f} |" for r in rows]
    lines += [f"| **all** | {result['cases']} | {result['accepted']} | {result['refused']} | {result['failed']} | "
              f"{result['seconds']:.1f} |", "", SECTION_END]
    replace_section(path, "\n".join(lines), SECTION_START, SECTION_END)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args()

    from engine.builder import build_clip_tokenizer
    from refact_tui.services.workspace import BaseModelInfo, create_workspace

    work = Path(tempfile.mkdtemp(prefix="refact-fuzz-"))
    ws = create_workspace(work / "w", BaseModelInfo("tiny", str(work / "none"), "sd-pipeline", "clip", "e" * 64,
                                                     {"num_layers": 4}))
    tokenizer = build_clip_tokenizer()
    files = work / "files"
    files.mkdir()
    n = {k: max(1, round(args.cases * v)) for k, v in SHARES.items()}
    n["manifests"] = max(1, args.cases - n["hparams"] - n["request_files"])
    t0 = time.perf_counter()
    try:
        rows = [
            run_target("hparams (CLI)", n["hparams"], ft.hparam_cases(),
                       lambda c: ft.run_hparam_case(ws.root, *c), args.seed),
            run_target("request files (import)", n["request_files"], ft.request_file_cases(),
                       lambda c: ft.run_request_file_case(ws, files, tokenizer, *c), args.seed + 1),
            run_target("manifests (apply-deltas)", n["manifests"], ft.manifest_cases(),
                       lambda c: ft.run_manifest_case(work, c), args.seed + 2),
        ]
    finally:
        ws.close()
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/fuzz_campaign.py " + " ".join(sys.argv[1:]),
        "cases": sum(r["cases"] for r in rows), "accepted": sum(r["accepted"] for r in rows),
        "refused": sum(r["refused"] for r in rows), "failed": sum(r["failed"] for r in rows),
        "seconds": time.perf_counter() - t0,
    }
    table = Table(title="fuzz campaign", title_justify="left")
    for col in ("target", "cases", "accepted", "refused", "failed", "seconds"):
        table.add_column(col, justify="left" if col == "target" else "right")
    for r in rows:
        table.add_row(r["target"], str(r["cases"]), str(r["accepted"]), str(r["refused"]), str(r["failed"]),
                      f"{r['seconds']:.1f}")
    console = Console()
    console.print(table)
    for r in rows:
        for f in r["failures"]:
            console.print(f"[red]{r['target']}[/]: ", end="")
            console.print(f, markup=False)
    if not args.no_write:
        write_section(result, rows, args.output)
    print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.items()}))
    sys.exit(1 if result["failed"] else 0)


if __name__ == "__main__":
    main()
