"""Fuzz campaign: 1,000 hostile cases (by default) over CLI hyperparameter values, request files
imported through the queue service, apply-deltas manifests and `refact run` options (--batch,
--insert, --layers, --lambda, --null-space, --max; with an empty queue and with a queued job).

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

import fuzz_targets as ft  # noqa: E402
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

SECTION_START = "<!-- fuzz-campaign:start -->"
SECTION_END = "<!-- fuzz-campaign:end -->"
SHARES = {"hparams": 0.25, "request_files": 0.35, "manifests": 0.25, "run_options": 0.15}

# `refact run` option values (issue 21): each is checked before any job is claimed, queue empty or not
RUN_VALUES = {
    "--batch": [None, "0", "1", "4", "4096", "4097", "9223372036854775808", "-3"],
    "--insert": [None, "rank-one", "joint", "spread", "bogus"],
    "--layers": [None, "", ",", "1", "1,2", "1,2,3", "2,9", "1,1", "-1", "a"],
    "--lambda": [None, "0", "0.01", "0.0399", "0.05", "1", "-1", "nan", "inf", "1e300"],
    "--max": [None, "1", "0", "-1", "99999999999999999999"],
}


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


def run_option_cases():
    from hypothesis import strategies as st

    picks = {k: st.sampled_from(v) for k, v in RUN_VALUES.items()}
    return st.tuples(st.fixed_dictionaries(picks), st.booleans(), st.booleans())


def run_run_option_case(roots: dict, options: dict, null_space: bool, queued: bool) -> str:
    """`refact run` with these options on a workspace whose queue is empty or holds one job (its base
    model folder is missing, so an accepted run stops at the model load, claiming nothing). A case fails
    on a traceback, a usage box or several lines, an exit code other than 0/1/2, or a job touched."""
    import sqlite3

    from typer.testing import CliRunner

    from refact_tui.cli.main import app

    root = roots["queued" if queued else "empty"]
    args = [x for k, v in options.items() if v is not None for x in (k, v)] + (["--null-space"] if null_space else [])
    r = CliRunner().invoke(app, ["--workspace", str(root), "run", "--device", "cpu", *args])
    err = (r.stderr or "").strip()
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError(f"run {args}: {type(r.exception).__name__}: {r.exception}")
    if r.exit_code not in (0, 1, 2) or "Traceback" in r.output or "Usage:" in r.output:
        raise AssertionError(f"run {args}: exit {r.exit_code}: {r.output[-300:]}")
    if r.exit_code and (len(err.splitlines()) != 1 or not err.startswith("error: ")):
        raise AssertionError(f"run {args}: not one line: {err[-300:]}")
    con = sqlite3.connect(str(root / "refact.db"))
    try:
        rows = con.execute("SELECT state, attempts, crashes FROM jobs").fetchall()
    finally:
        con.close()
    if any(row != ("queued", 0, 0) for row in rows):
        raise AssertionError(f"run {args}: a job was touched: {rows}")
    return "refused" if r.exit_code == 2 else "accepted"


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
    n["manifests"] = max(1, args.cases - n["hparams"] - n["request_files"] - n["run_options"])
    roots = {}
    for name in ("empty", "queued"):  # the recorded slot: 4 layers, a final readout reached from 0..2
        slots = {"text_encoder": {"family": "clip", "num_layers": 4, "editable": [0, 2], "readout": "final",
                                  "default_layer": 2, "max_length": 77}}
        info = BaseModelInfo("tiny", str(work / "none"), "sd-pipeline", "clip", "e" * 64,
                             {"num_layers": 4, "slots": slots})
        with create_workspace(work / f"run-{name}", info) as run_ws:
            if name == "queued":
                from engine.methods.refact.hparams import ReFACTHParams
                from engine.request import EditRequest
                from store.jobs import enqueue

                enqueue(run_ws.db, run_ws.history().id, EditRequest("The old king", "a king", "a queen"),
                        ReFACTHParams(layer=2, max_steps=4))
        roots[name] = work / f"run-{name}"
    t0 = time.perf_counter()
    try:
        rows = [
            run_target("hparams (CLI)", n["hparams"], ft.hparam_cases(),
                       lambda c: ft.run_hparam_case(ws.root, *c), args.seed),
            run_target("request files (import)", n["request_files"], ft.request_file_cases(),
                       lambda c: ft.run_request_file_case(ws, files, tokenizer, *c), args.seed + 1),
            run_target("manifests (apply-deltas)", n["manifests"], ft.manifest_cases(),
                       lambda c: ft.run_manifest_case(work, c), args.seed + 2),
            run_target("run options (refact run)", n["run_options"], run_option_cases(),
                       lambda c: run_run_option_case(roots, *c), args.seed + 3),
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
