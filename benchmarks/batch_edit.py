"""Vectorised v* for N requests against one-at-a-time ``compute_edit``, and the joint solve for 1,000.

The full-size random SD1 text encoder (CLIP-L shapes, 768/3072, from ``engine.builder``'s "full" SD1
config, built in memory: the UNet is not needed), layer 7, fixed steps (threshold 1.0, every step
runs). For N = 1, 8, 32, 90 requests both ways run in the same process on the same requests:
seconds per request and the ratio. C comes from a small corpus sample with ridge 1e-3 (cached, not
timed). Then ``joint_factors`` for 1,000 requests (2,000 keys) at one layer. Prints a table and a
final JSON line, and rewrites its section of BENCHMARKS.md.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/batch_edit.py --steps 10
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from report import replace_section  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.adapters import adapter_for  # noqa: E402
from engine.builder import make_text_encoder, make_tokenizer, pipeline_configs  # noqa: E402
from engine.covariance import SecondMomentStore  # noqa: E402
from engine.methods.refact.edit import compute_edit, compute_values  # noqa: E402
from engine.methods.refact.hparams import ReFACTHParams  # noqa: E402
from engine.methods.refact.joint_solve import joint_factors  # noqa: E402
from engine.request import EditRequest  # noqa: E402

SECTION_START = "<!-- batch_edit:start -->"
SECTION_END = "<!-- batch_edit:end -->"
SIZES = (1, 8, 32, 90)
PEOPLE = ("prince", "president", "queen", "king", "minister", "mayor", "chancellor", "senator", "governor", "pope")
PLACES = ("wales", "france", "canada", "spain", "japan", "brazil", "kenya", "norway", "india", "chile")
NEW = ("william", "anne", "louis", "maria", "kenji", "ana", "otieno", "ingrid", "ravi", "lucia")


@dataclass
class Encoder:
    text_encoder: torch.nn.Module
    tokenizer: Any
    adapter: Any


def requests(n: int) -> list[EditRequest]:
    out = []
    for i in range(n):
        who, where, new = PEOPLE[i % 10], PLACES[(i // 10) % 10], NEW[(i + i // 10) % 10]
        subject = f"{who} of {where}"
        out.append(EditRequest(prompt=f"the {subject}", subject=subject, source=f"the old {who}", target=f"{new} the {who}"))
    return out


def build_encoder(seed: int = 0) -> Encoder:
    spec = pipeline_configs("full", "sd1").encoders["text_encoder"]
    torch.manual_seed(seed)
    model = make_text_encoder(spec)
    return Encoder(model, make_tokenizer(spec.tokenizer), adapter_for(model))


def time_sizes(model: Encoder, hp: ReFACTHParams, mom2: torch.Tensor, sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    rows = []
    compute_edit(model, requests(1)[0], hp, second_moment=mom2)  # warm-up
    for n in sizes:
        reqs = requests(n)
        t0 = time.perf_counter()
        singles = [compute_edit(model, r, hp, second_moment=mom2) for r in reqs]
        single_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        batch = compute_values(model, reqs, hp, second_moment=mom2)
        batch_s = time.perf_counter() - t0
        diff = max(float((a.tensors["v_star"] - b.tensors["v_star"]).abs().max()) for a, b in zip(singles, batch.results))
        same_steps = all(a.steps_run == b.steps_run for a, b in zip(singles, batch.results))
        rows.append({"n": n, "single_s_per_request": single_s / n, "batch_s_per_request": batch_s / n,
                     "speedup": single_s / batch_s, "max_abs_v_star_diff": diff, "same_steps": same_steps,
                     "rebuilds": batch.stats.rebuilds})
        print(f"N={n}: one-at-a-time {single_s / n:.3f} s/req, vectorised {batch_s / n:.3f} s/req, "
              f"{single_s / batch_s:.2f}x, max |dv*| {diff:.1e}", flush=True)
    return rows


def time_joint(n: int, key: int, out: int, mom2: torch.Tensor) -> float:
    gen = torch.Generator().manual_seed(0)
    keys = torch.randn(2 * n, key, generator=gen, dtype=torch.float64)
    resid = torch.randn(2 * n, out, generator=gen, dtype=torch.float64)
    c = mom2.clone()  # a fresh tensor: the Cholesky factor is part of the timed solve
    t0 = time.perf_counter()
    f = joint_factors(c, keys, resid, 1e-2)
    spent = time.perf_counter() - t0
    assert torch.isfinite(f.left).all()
    return spent


def write_section(summary: dict[str, Any], rows: list[dict[str, Any]], path: Path) -> None:
    lines = [
        SECTION_START,
        "## Batch edits (`benchmarks/batch_edit.py`)",
        "",
        f"- date: {summary['date']}; device: {summary['device']}; torch threads: {summary['threads']}; load average "
        f"at start: {summary['load']} (the 2 cores are shared with other work)",
        f"- random full-size SD1 text encoder (CLIP-L 768/3072), layer {summary['layer']}, {summary['steps']} fixed "
        "steps (threshold 1.0), 10 rewriting prompts per request; the same requests one at a time "
        "(`compute_edit`) and vectorised (`engine.methods.refact.edit.compute_values`), keys and targets included.",
        f"- {summary['steps']} steps instead of ReFACT's 100 so that 131 requests each way fit on this shared CPU; "
        "on CPU the cost follows token-steps either way, so the ratio is what the vectorisation saves in per-op "
        "overhead (the big win is on a GPU, where one step is launch-bound).",
        "",
        "| N | one at a time s/request | vectorised s/request | speedup | max abs v* diff | same steps |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['n']} | {r['single_s_per_request']:.3f} | {r['batch_s_per_request']:.3f} | {r['speedup']:.2f}x | "
                     f"{r['max_abs_v_star_diff']:.1e} | {'yes' if r['same_steps'] else 'NO'} |")
    lines += ["", f"- joint solve, 1,000 requests (2,000 keys) at one layer, fp64, Cholesky of C included: "
                  f"{summary['joint_solve_1000_s']:.2f} s", "", SECTION_END]
    replace_section(path, "\n".join(lines), SECTION_START, SECTION_END)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--layer", type=int, default=7)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--samples", type=int, default=400, help="corpus lines for C")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    model = build_encoder()
    hp = ReFACTHParams(layer=args.layer, max_steps=args.steps, prob_threshold=1.0, weight_decay=0.0, ridge=1e-3)
    mom2 = SecondMomentStore(None).get(model, args.layer, n_samples=args.samples)
    rows = time_sizes(model, hp, mom2, tuple(args.sizes))
    joint_s = time_joint(1000, model.adapter.key_size, model.adapter.hidden_size,
                         mom2 + 1e-3 * mom2.diagonal().mean() * torch.eye(mom2.shape[0], dtype=mom2.dtype))
    print(f"joint solve, 1000 requests: {joint_s:.2f} s", flush=True)
    summary = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": f"cpu ({platform.processor() or platform.machine()})", "threads": torch.get_num_threads(),
        "load": f"{load:.1f}", "layer": args.layer, "steps": args.steps, "joint_solve_1000_s": joint_s,
    }
    print("| N | one at a time s/req | vectorised s/req | speedup | max abs v* diff |")
    for r in rows:
        print(f"| {r['n']} | {r['single_s_per_request']:.3f} | {r['batch_s_per_request']:.3f} | {r['speedup']:.2f}x | "
              f"{r['max_abs_v_star_diff']:.1e} |")
    if not args.no_write:
        write_section(summary, rows, args.output)
    print(json.dumps({
        "per_request_s": {str(r["n"]): {"single": r["single_s_per_request"], "vectorised": r["batch_s_per_request"]} for r in rows},
        "speedup": {str(r["n"]): r["speedup"] for r in rows},
        "joint_solve_1000_s": joint_s, "device": summary["device"], "steps": args.steps,
    }))


if __name__ == "__main__":
    main()
