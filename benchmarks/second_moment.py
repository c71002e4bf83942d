"""Second-moment cost at real key widths: CLIP-L 3072, OpenCLIP-H 4096, bigG 5120, T5-XXL 10240.

For each width: accumulate C = K^T K / n in float64 from ``--tokens`` random key rows in batches of
``--batch`` (what ``engine.covariance.collect_second_moment`` does after each forward), then the float64
Cholesky + solve of ``engine.methods.refact.keys.left_vector``. Reports seconds and peak resident memory (the
process's high-water mark, widths run in ascending order). The encoders' forward passes are not
included (T5-XXL's 4.7B parameters do not fit this CPU box). Prints a table and a final JSON line,
and rewrites its section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from datetime import date
from pathlib import Path

import torch
from report import replace_section  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

from engine.methods.refact.keys import left_vector
from engine.methods.refact.linalg import CHOLESKY_CACHE

SECTION_START = "<!-- bench:second_moment -->"
SECTION_END = "<!-- /bench:second_moment -->"
WIDTHS = {"CLIP-L": 3072, "OpenCLIP-H": 4096, "bigG": 5120, "T5-XXL": 10240}


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def one(width: int, tokens: int, batch: int, device: str) -> dict:
    gen = torch.Generator().manual_seed(0)
    acc = torch.zeros(width, width, dtype=torch.float64, device=device)
    t0 = time.perf_counter()
    done = 0
    while done < tokens:
        n = min(batch, tokens - done)
        k = torch.randn(n, width, generator=gen).to(device, torch.float64)
        acc += k.T @ k
        done += n
    c = (acc / tokens).cpu()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    accumulate_s = time.perf_counter() - t0
    del acc
    t0 = time.perf_counter()
    u = left_vector(c, torch.randn(width, generator=gen), ridge=1e-4)
    solve_s = time.perf_counter() - t0
    assert torch.isfinite(u).all()
    CHOLESKY_CACHE.clear()
    return {"width": width, "tokens": tokens, "accumulate_s": accumulate_s, "solve_s": solve_s,
            "c_mib": width * width * 8 / 2**20, "peak_rss_mib": peak_mib()}


def write_section(summary: dict, rows: list[dict], path: Path) -> None:
    lines = [SECTION_START, "## Second moments at real key widths (`benchmarks/second_moment.py`)", "",
             f"- date: {summary['date']}; device: {summary['device']}; torch threads: {summary['threads']}; load average "
             f"at the end: {summary.get('load', '?')} (the cores are shared with other work); "
             f"{summary['tokens']} random key rows per width, batches of {summary['batch']}; fp64 accumulation and "
             "Cholesky + solve (ridge 1e-4); encoder forwards not included; peak RSS is the process high-water mark.",
             "", "| encoder | key width | C fp64 MiB | accumulate s | Cholesky + solve s | peak RSS MiB |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['width']} | {r['c_mib']:.0f} | {r['accumulate_s']:.1f} | {r['solve_s']:.1f} | "
                     f"{r['peak_rss_mib']:.0f} |")
    lines += ["", SECTION_END]
    replace_section(path, "\n".join(lines), SECTION_START, SECTION_END)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--only", default="", help="comma-separated encoder names (default: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args()
    names = [n for n in WIDTHS if not args.only or n in args.only.split(",")]
    rows = []
    print(f"{'encoder':<11} {'width':>6} {'accum s':>8} {'solve s':>8} {'peak MiB':>9}")
    for name in names:
        r = {"name": name, **one(WIDTHS[name], args.tokens, args.batch, args.device)}
        rows.append(r)
        print(f"{name:<11} {r['width']:>6} {r['accumulate_s']:>8.1f} {r['solve_s']:>8.1f} {r['peak_rss_mib']:>9.0f}")
    summary = {"date": date.today().isoformat(), "device": f"{args.device} ({platform.machine()}, {os.cpu_count()} cores)",
               "threads": torch.get_num_threads(), "tokens": args.tokens, "batch": args.batch,
               "load": f"{os.getloadavg()[0]:.1f}"}
    if not args.no_write:
        write_section(summary, rows, Path(__file__).resolve().parents[1] / "BENCHMARKS.md")
    print(json.dumps({"bench": "second_moment", **summary, "rows": rows}))


if __name__ == "__main__":
    main()
