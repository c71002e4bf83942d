"""Time one ReFACT edit of every encoder slot of random full-size SD1 / SDXL / SD3 / FLUX encoders.

For each family and slot: C at the slot's layer (collected once on a small corpus and cached; the T5
slot uses an identity C, its real cost is the second-moment row), a warm-up edit, then the timed edit
(key + v* steps + insertion) with wd 0 and threshold 1.0 so every step runs. SD1 is always measured
first, so every family's total has a ratio to SD1 from the same run. The T5 slot keeps XXL's widths
but only a few of its 24 blocks (fp32 T5-XXL does not fit 24 GB): its steps are timed with one block
after the edited layer and scaled to the real default layer's depth (marked "est."). A last row times
the second moment of a T5-XXL-sized key (10240): accumulation, Cholesky + solve, peak memory (in a
child process). Writes a section of BENCHMARKS.md.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/edit_latency.py --arch sd1 sdxl sdxl:text_encoder_2=26 sd3 flux
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from report import replace_section  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from latency_models import build_bench_model, describe  # noqa: E402
from naive_loop import naive_seconds_per_step, sync  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from engine.covariance import SecondMomentStore, default_corpus_path  # noqa: E402
from engine.methods.refact.edit import compute_edit  # noqa: E402
from engine.methods.refact.hparams import ReFACTHParams  # noqa: E402
from engine.methods.refact.insert import insert  # noqa: E402
from engine.methods.refact.keys import left_vector  # noqa: E402
from engine.request import EditRequest  # noqa: E402

SECTION_START = "<!-- edit_latency:start -->"
SECTION_END = "<!-- edit_latency:end -->"
SECTION_HEADING = "## Edit latency"
REQUEST = EditRequest(prompt="the prince of wales", source="prince charles", target="prince william")
ARCHS = ("sd1", "sdxl", "sd3", "flux")


def parse_spec(spec: str) -> tuple[str, dict[str, int]]:
    """"sdxl:text_encoder_2=26,text_encoder=8" -> ("sdxl", {...})."""
    arch, _, rest = spec.partition(":")
    if arch not in ARCHS:
        raise argparse.ArgumentTypeError(f"--arch {spec!r}: the family must be one of {', '.join(ARCHS)}")
    layers = {}
    for part in filter(None, rest.split(",")):
        name, _, value = part.partition("=")
        if not value.isdigit():
            raise argparse.ArgumentTypeError(f"--arch {spec!r}: write slot layers as SLOT=N")
        layers[name] = int(value)
    return arch, layers


def _t5_scale(slot, layer: int, real_blocks: int) -> tuple[int, float, float]:
    """(real default layer, optimize-time factor, key-time factor) from the cut T5 to the real one."""
    built_after = slot.num_layers - layer - 1
    real_layer = min(round(7 * real_blocks / 12), real_blocks - 1)
    return real_layer, (real_blocks - real_layer - 1) / max(built_after, 1), (real_layer + 1) / (layer + 1)


def bench_slot(bench, slot, layer: int, args: argparse.Namespace, store: SecondMomentStore,
               device: torch.device, *, warm: bool = True) -> dict[str, Any]:
    """Time one slot's edit; returns its row (times already scaled for a cut T5)."""
    is_t5 = slot.family == "t5"
    steps = args.t5_steps if is_t5 else (args.timed_steps or args.steps)
    # ridge: the small timing corpus has fewer tokens than key dimensions (it does not change the timing)
    hp = ReFACTHParams(layer=layer, max_steps=steps, weight_decay=0.0, prob_threshold=1.0, ridge=1e-3)
    t0 = time.perf_counter()
    if is_t5:
        second_moment = torch.eye(slot.adapter.key_size, dtype=torch.float64)
        left_vector(second_moment, torch.randn(slot.adapter.key_size))  # factor once, as the cache would
    else:
        second_moment = store.get(slot, layer, corpus=default_corpus_path(), n_samples=args.corpus_lines)
    stats_first = time.perf_counter() - t0
    weight = slot.adapter.fc2(layer).weight
    saved = weight.detach().clone()
    if warm and not is_t5:  # warm-up (allocator, kernels); a T5 step costs minutes on CPU
        compute_edit(slot, REQUEST, hp.with_overrides(max_steps=1), second_moment=second_moment)
    sync(device)
    t0 = time.perf_counter()
    res = compute_edit(slot, REQUEST, hp, second_moment=second_moment)
    sync(device)
    compute_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    verify = insert(slot.adapter, res.delta, res.tensors["k_e"], res.tensors["v_star"])
    sync(device)
    insert_s = time.perf_counter() - t0
    with torch.no_grad():
        weight.copy_(saved)
    # The v* phase is a fixed part (frozen target features, the prefix forward up to the layer) and a
    # per-step part; only the per-step part scales with the step count. Each step's event carries the
    # time since the loop started, so the per-step cost is the mean spacing of those events.
    events = res.steps
    loop_s = events[-1].elapsed if len(events) > 1 else res.timings.optimize_s
    per_step = loop_s / max(len(events) - 1, 1)
    setup_s = max(res.timings.optimize_s - per_step * res.steps_run, 0.0)
    # tokenization, checks and the right vector: not scaled for a cut T5
    overhead_s = compute_s - res.timings.key_s - res.timings.optimize_s
    optimize_s, key_s, real_layer, note = setup_s + per_step * args.steps, res.timings.key_s, layer, ""
    if is_t5:
        real_layer, opt_factor, key_factor = _t5_scale(slot, layer, bench.real_layers[slot.name])
        optimize_s = setup_s * key_factor + per_step * args.steps * opt_factor
        key_s *= key_factor
        per_step *= opt_factor
        note = (f"est.: {res.steps_run} step(s) timed with {slot.num_layers - layer - 1} block(s) after layer {layer} "
                f"of {slot.num_layers}, scaled to layer {real_layer} of {bench.real_layers[slot.name]}")
    return {
        "slot": slot.name, "layer": real_layer, "key_size": int(slot.adapter.key_size),
        "readout": slot.adapter.readout.spec(), "stats_first_s": stats_first, "key_s": key_s,
        "optimize_s": optimize_s, "insert_s": insert_s, "seconds_per_step": per_step,
        "seconds_per_edit": overhead_s + key_s + optimize_s + insert_s, "steps": args.steps, "steps_timed": res.steps_run,
        "measured_compute_s": compute_s, "verify_error": verify, "estimated": is_t5, "note": note,
    }


@dataclass
class Prepared:
    """One family built once for every repeat: its slots, their layers and the C cache."""

    spec: str
    arch: str
    bench: Any
    plan: list[tuple[Any, int]]
    store: SecondMomentStore
    build_s: float


def prepare_arch(spec: str, args: argparse.Namespace, device: torch.device) -> Prepared:
    arch, layers = parse_spec(spec)
    t0 = time.perf_counter()
    bench = build_bench_model(arch, device, t5_blocks=args.t5_blocks, seed=args.seed)
    build_s = time.perf_counter() - t0
    plan = []
    for i, slot in enumerate(bench.model.slots):
        if slot.family == "t5":
            layer = layers.get(slot.name, slot.num_layers - 2)
        else:
            first = args.layer if i == 0 and args.layer is not None else slot.default_layer()
            layer = layers.get(slot.name, first)
        slot.check_layer(layer)
        plan.append((slot, layer))
    return Prepared(spec, arch, bench, plan, SecondMomentStore(None), build_s)


def bench_arch(prep: Prepared, args: argparse.Namespace, device: torch.device, *, first: bool) -> dict[str, Any]:
    """One timed edit of every slot of ``prep`` (the warm-up and the naive loop only when ``first``)."""
    rows = [bench_slot(prep.bench, slot, layer, args, prep.store, device, warm=first) for slot, layer in prep.plan]
    out = {"spec": prep.spec, "arch": prep.arch, "build_s": prep.build_s, "slots": rows, "describe": describe(prep.bench),
           "seconds_per_edit": sum(r["seconds_per_edit"] for r in rows),
           "estimated": any(r["estimated"] for r in rows)}
    if first and prep.arch == "sd1" and args.naive_steps > 0:
        hp = ReFACTHParams(layer=rows[0]["layer"], weight_decay=0.0, prob_threshold=1.0)
        out["naive_seconds_per_step"] = naive_seconds_per_step(prep.bench.model.slots[0], REQUEST, hp, args.naive_steps, device)
    return out


def combine(runs: list[dict[str, Any]], sd1_runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The repeat with the median total, plus the median and range of the per-repeat ratio to SD1
    (each repeat times SD1 and this family back to back, so slow drifts of a shared CPU cancel)."""
    ratios = sorted(r["seconds_per_edit"] / s["seconds_per_edit"] for r, s in zip(runs, sd1_runs))
    totals = sorted(r["seconds_per_edit"] for r in runs)
    mid = next(r for r in runs if r["seconds_per_edit"] == totals[(len(totals) - 1) // 2])
    return {**mid, "repeats": len(runs), "ratio": ratios[(len(ratios) - 1) // 2],
            "ratio_range": (ratios[0], ratios[-1]), "all_seconds": [r["seconds_per_edit"] for r in runs]}


def _peak_rss_kib() -> int:
    """This process's peak resident memory (VmHWM; ru_maxrss would carry the parent's over exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def second_moment_row(width: int, tokens: int) -> dict[str, Any]:
    """Run in a child process: accumulate C of ``tokens`` random ``width``-wide keys in fp64 (as the
    collector does, 512 rows at a time), then the engine's ridge + Cholesky + solve; peak RSS."""
    torch.manual_seed(0)
    torch.ones(8) @ torch.ones(8)
    base_kib = _peak_rss_kib()
    t0 = time.perf_counter()
    acc = torch.zeros(width, width, dtype=torch.float64)
    for start in range(0, tokens, 512):
        k = torch.randn(min(512, tokens - start), width).to(torch.float64)
        acc += k.T @ k
    c = acc / tokens
    accumulate_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    left_vector(c, torch.randn(width), ridge=1e-3)  # ridge: fewer rows than dimensions here
    factor_s = time.perf_counter() - t0
    peak_kib = _peak_rss_kib()
    return {"width": width, "tokens": tokens, "accumulate_s": accumulate_s, "factor_solve_s": factor_s,
            "peak_mib": (peak_kib - base_kib) / 1024, "c_mib": width * width * 8 / 2**20}


def run_second_moment_child(width: int, tokens: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--mom-only", str(width), str(tokens)], check=True,
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fmt_slots(r: dict[str, Any]) -> str:
    return " + ".join(f"{s['slot']}@{s['layer']}: {s['seconds_per_edit']:.2f}{' est.' if s['estimated'] else ''}"
                      for s in r["slots"])


def _timed_note(summary: dict[str, Any]) -> str:
    n = summary.get("timed_steps") or 0
    if not n or n >= summary["steps"]:
        return ""
    return (f"; CLIP slots: {n} steps timed after a 1-step warm-up, the per-step cost scaled to {summary['steps']} "
            "steps and the fixed part (keys and prefix forward, target features) counted once")


def write_section(results: list[dict[str, Any]], mom: dict[str, Any] | None, summary: dict[str, Any], path: Path) -> None:
    lines = [
        SECTION_START,
        f"{SECTION_HEADING} (`benchmarks/edit_latency.py`)",
        "",
        f"- date: {summary['date']}; device: {summary['device']} ({summary['device_name']}); torch threads: "
        f"{summary['threads']}; load average at start: {summary['load']}",
        f"- random encoders with the real shapes (CLIP-L 768/3072, OpenCLIP-bigG 1280/5120, T5-XXL 4096/10240); "
        f"request 'the prince of wales' -> 'prince william'; {summary['steps']} steps, wd 0, threshold 1.0 "
        f"(all steps run{_timed_note(summary)}); C from a small corpus (ridge 1e-3), cached, not in the edit time; each slot's default layer unless the "
        "spec names one.",
        f"- T5 slots are estimates: fp32 T5-XXL (19 GB) does not fit this box, so the slot has XXL's widths with "
        f"{summary['t5_blocks']} of 24 blocks; {summary['t5_steps']} step(s) were timed with one block after the "
        "edited layer and scaled to the real default layer (14 of 24: 9 blocks after it, all 256/512 padded "
        "positions run, since SD3/FLUX read T5 unmasked). On this CPU a T5 slot is hours per edit: use a GPU.",
        "",
        f"- {summary['repeats']} repeat(s), families interleaved; each row is the repeat with the median total, the ratio is "
        "the median of the per-repeat ratios to that repeat's SD1 edit (range in brackets).",
        "",
        "| run | slots (layer: s per edit) | total s per edit | ratio to SD1 | s/step of the slowest slot |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        slow = max(r["slots"], key=lambda s: s["seconds_per_step"])
        low, high = r["ratio_range"]
        spread = f" ({low:.2f}-{high:.2f})" if r["repeats"] > 1 else ""
        lines.append(f"| {r['spec']} | {_fmt_slots(r)} | {r['seconds_per_edit']:.2f}{' est.' if r['estimated'] else ''} | "
                     f"{r['ratio']:.2f}x{spread} | {slow['seconds_per_step'] * 1000:.0f} ms ({slow['slot']}) |")
    if "naive_seconds_per_step" in results[0]:
        naive = results[0]["naive_seconds_per_step"]
        lines += ["", f"- SD1 reference-shaped loop (full forward padded to 77, targets re-encoded each step): "
                      f"{naive:.3f} s/step, {naive / results[0]['slots'][0]['seconds_per_step']:.0f}x the engine's."]
    if mom is not None:
        lines += [
            "", "| second moment | rows | accumulate s (fp64) | ridge + Cholesky + solve s | peak extra memory | C size |",
            "|---|---|---|---|---|---|",
            f"| T5-XXL-sized key {mom['width']} | {mom['tokens']} | {mom['accumulate_s']:.1f} | {mom['factor_solve_s']:.1f} | "
            f"{mom['peak_mib']:.0f} MiB | {mom['c_mib']:.0f} MiB fp64 |",
            "", "- accumulation is linear in the rows (5,000 captions in SD3's unmasked format give about 75k prompt-token "
                "rows); the forward pass that produces the keys is not included.",
        ]
    lines += ["", SECTION_END]
    replace_section(path, "\n".join(lines), SECTION_START, SECTION_END, heading=SECTION_HEADING)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--mom-only":
        print(json.dumps(second_moment_row(int(sys.argv[2]), int(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", nargs="+", default=["sd1", "sdxl"],
                        help="families to time, each optionally with slot layers: sdxl:text_encoder_2=26 (sd1 always first)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--layer", type=int, default=None,
                        help="layer of each family's first slot (default: the slot's own default; SD1: the paper's 7)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--timed-steps", type=int, default=0,
                        help="v* steps actually run on a CLIP slot, scaled to --steps (0: run all --steps)")
    parser.add_argument("--t5-steps", type=int, default=1, help="v* steps actually run on a T5 slot (then scaled)")
    parser.add_argument("--t5-blocks", type=int, default=2, help="T5-XXL-width blocks built (of 24)")
    parser.add_argument("--corpus-lines", type=int, default=64)
    parser.add_argument("--naive-steps", type=int, default=0, help="steps of the SD1 reference-shaped loop (0: skip)")
    parser.add_argument("--mom-width", type=int, default=10240, help="key width of the second-moment row (0: skip)")
    parser.add_argument("--mom-tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=1,
                        help="time every family this many times, interleaved; report the median (use 5 on a shared CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args()
    specs = list(dict.fromkeys(args.arch))
    for spec in specs:
        try:
            parse_spec(spec)
        except argparse.ArgumentTypeError as exc:
            parser.error(str(exc))
    if "sd1" not in specs:
        specs.insert(0, "sd1")
    specs.sort(key=lambda s: s != "sd1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")

    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    results = []
    summary = {
        "date": dt.date.today().isoformat(), "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "load": load, "steps": args.steps, "t5_steps": args.t5_steps,
        "t5_blocks": args.t5_blocks, "timed_steps": args.timed_steps, "repeats": args.repeats,
    }
    preps = [prepare_arch(spec, args, device) for spec in specs]
    runs: list[list[dict[str, Any]]] = [[] for _ in specs]
    for rep in range(args.repeats):
        for i, prep in enumerate(preps):
            runs[i].append(bench_arch(prep, args, device, first=rep == 0))
            print(f"repeat {rep + 1}/{args.repeats} {prep.spec}: {_fmt_slots(runs[i][-1])}", flush=True)
    results = [combine(r, runs[0]) for r in runs]
    del preps
    mom = run_second_moment_child(args.mom_width, args.mom_tokens) if args.mom_width > 0 else None

    table = Table(title=f"ReFACT edit latency per family, random full-size encoders, {device.type}")
    for col in ("run", "slot", "layer", "key", "C first s", "edit s", "ms/step", "note"):
        table.add_column(col, justify="right")
    for r in results:
        for s in r["slots"]:
            table.add_row(r["spec"], s["slot"], str(s["layer"]), str(s["key_size"]), f"{s['stats_first_s']:.1f}",
                          f"{s['seconds_per_edit']:.2f}", f"{s['seconds_per_step'] * 1000:.0f}", s["note"][:40])
        table.add_row(r["spec"], "total", "", "", "", f"{r['seconds_per_edit']:.2f}", f"{r['ratio']:.2f}x SD1", "")
    Console().print(table)
    if mom is not None:
        print(f"second moment, key {mom['width']}: accumulate {mom['accumulate_s']:.1f} s over {mom['tokens']} rows, "
              f"ridge+Cholesky+solve {mom['factor_solve_s']:.1f} s, peak +{mom['peak_mib']:.0f} MiB")
    if not args.no_write:
        write_section(results, mom, summary, args.output)
    print(json.dumps({
        "device": device.type, "steps": args.steps,
        "seconds_per_edit": {r["spec"]: r["seconds_per_edit"] for r in results},
        "ratio_to_sd1": {r["spec"]: r["ratio"] for r in results},
        "ratio_range": {r["spec"]: r["ratio_range"] for r in results}, "repeats": args.repeats,
        "slots": {r["spec"]: r["slots"] for r in results}, "second_moment": mom,
    }))


if __name__ == "__main__":
    main()
