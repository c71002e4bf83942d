"""Time one ReFACT edit of every encoder slot of random full-size SD1 / SDXL / SD3 / FLUX encoders.

For each family and slot: C at the slot's layer (collected once on a small corpus and cached; the T5
slot uses an identity C, its real cost is the second-moment row), a warm-up edit, then the timed edit
(key + v* steps + insertion) with wd 0 and threshold 1.0 so every step runs. SD1 is always measured
first, so every family's total has a ratio to SD1 from the same run. The T5 slot keeps XXL's widths
but only a few of its 24 blocks (fp32 T5-XXL does not fit 24 GB): its steps are timed with one block
after the edited layer and scaled to the real default layer's depth (marked "est."). A last row times
the second moment of a T5-XXL-sized key (10240): accumulation, Cholesky + solve, peak memory (in a
child process). Writes a section of BENCHMARKS.md.

LLM families (lumina2, z-image, cogview4, hidream, qwen-image, flux2): the decoder-LM slot with the real
model's widths (hidden, intermediate, heads) and ``--llm-blocks`` blocks, the family's template, read at
its last block; ``--llm-steps`` v* steps are timed at layer 0 and scaled, like the T5 rows, to the real
default layer and the real deepest tap. u comes from an identity C there (no width² allocation while
the encoder is held); the cost of C is a row per real width (``--mom-widths``, each in a child process:
fp32 accumulation in chunks, then the engine's fp64 solve, peak memory). These runs write their own
section ("Edit latency at LLM widths").

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/edit_latency.py --arch sd1 sdxl sdxl:text_encoder_2=26 sd3 flux
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/edit_latency.py --arch lumina2 z-image cogview4 hidream qwen-image \
        flux2 --mom-widths 9216 9728 13696 14336 18944 32768 --timed-steps 20
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
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from report import replace_section  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from latency_models import LLM_SHAPES, build_bench_model, build_llm_bench_model, describe  # noqa: E402
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
LLM_SECTION_START = "<!-- edit_latency_llm:start -->"
LLM_SECTION_END = "<!-- edit_latency_llm:end -->"
LLM_SECTION_HEADING = "## Edit latency at LLM widths"
REQUEST = EditRequest(prompt="the prince of wales", source="prince charles", target="prince william")
ARCHS = ("sd1", "sdxl", "sd3", "flux", *LLM_SHAPES)


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


def _llm_scale(slot, layer: int, arch: str) -> tuple[int, float, float]:
    """(real default layer, optimize-time factor, key-time factor) from the cut LLM to the real one:
    the real v* steps run the blocks from the default layer to the deepest tap."""
    shape = LLM_SHAPES[arch]
    real_layer = min(round(7 * shape.real_layers / 12), shape.real_tap)
    built_after = slot.num_layers - layer - 1
    return real_layer, (shape.real_tap - real_layer + 1) / (built_after + 1), (real_layer + 1) / (layer + 1)


@contextmanager
def identity_u():
    """u = k* / |k*| (an identity C) inside ``compute_edit``: the LLM rows time the edit without a
    width² C next to the encoder; C's own cost is its row."""
    import engine.methods.refact.edit as edit_module

    real = edit_module.left_vector
    edit_module.left_vector = lambda c, k, *a, **kw: (k / k.norm()).detach().to("cpu", torch.float32)
    try:
        yield torch.zeros(1, 1, dtype=torch.float64)
    finally:
        edit_module.left_vector = real


def bench_slot(bench, slot, layer: int, args: argparse.Namespace, store: SecondMomentStore,
               device: torch.device, *, warm: bool = True, arch: str = "") -> dict[str, Any]:
    """Time one slot's edit; returns its row (times already scaled for a cut T5 or LLM)."""
    is_llm = slot.family == "llm"
    is_t5 = slot.family == "t5"
    steps = args.t5_steps if is_t5 else args.llm_steps if is_llm else (args.timed_steps or args.steps)
    # ridge: the small timing corpus has fewer tokens than key dimensions (it does not change the timing)
    hp = ReFACTHParams(layer=layer, max_steps=steps, weight_decay=0.0, prob_threshold=1.0, ridge=1e-3)
    t0 = time.perf_counter()
    patch = identity_u() if is_llm else nullcontext(None)
    if is_llm:
        second_moment = patch.__enter__()
    elif is_t5:
        second_moment = torch.eye(slot.adapter.key_size, dtype=torch.float64)
        left_vector(second_moment, torch.randn(slot.adapter.key_size))  # factor once, as the cache would
    else:
        second_moment = store.get(slot, layer, corpus=default_corpus_path(), n_samples=args.corpus_lines)
    stats_first = time.perf_counter() - t0
    weight = slot.adapter.fc2(layer).weight
    saved = weight.detach().clone()
    try:
        if warm and not is_t5 and not (is_llm and device.type == "cpu"):  # warm-up (allocator, kernels)
            compute_edit(slot, REQUEST, hp.with_overrides(max_steps=1), second_moment=second_moment)
        sync(device)
        t0 = time.perf_counter()
        res = compute_edit(slot, REQUEST, hp, second_moment=second_moment)
        sync(device)
        compute_s = time.perf_counter() - t0
    finally:
        patch.__exit__(None, None, None)
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
    elif is_llm:
        real_layer, opt_factor, key_factor = _llm_scale(slot, layer, arch)
        optimize_s = setup_s * key_factor + per_step * args.steps * opt_factor
        key_s *= key_factor
        per_step *= opt_factor
        note = (f"est.: {res.steps_run} step(s) timed at layer {layer} of {slot.num_layers} blocks, scaled to layer "
                f"{real_layer} of {bench.real_layers[slot.name]} (tap {LLM_SHAPES[arch].real_tap})")
    return {
        "slot": slot.name, "layer": real_layer, "key_size": int(slot.adapter.key_size),
        "readout": slot.adapter.readout.spec(), "stats_first_s": stats_first, "key_s": key_s,
        "optimize_s": optimize_s, "insert_s": insert_s, "seconds_per_step": per_step,
        "seconds_per_edit": overhead_s + key_s + optimize_s + insert_s, "steps": args.steps, "steps_timed": res.steps_run,
        "measured_compute_s": compute_s, "verify_error": verify, "estimated": is_t5 or is_llm, "note": note,
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
    if arch in LLM_SHAPES:
        bench = build_llm_bench_model(arch, device, blocks=args.llm_blocks, seed=args.seed)
    else:
        bench = build_bench_model(arch, device, t5_blocks=args.t5_blocks, seed=args.seed)
    build_s = time.perf_counter() - t0
    plan = []
    for i, slot in enumerate(bench.model.slots):
        if slot.family == "llm":
            layer = layers.get(slot.name, 0)
        elif slot.family == "t5":
            layer = layers.get(slot.name, slot.num_layers - 2)
        else:
            first = args.layer if i == 0 and args.layer is not None else slot.default_layer()
            layer = layers.get(slot.name, first)
        slot.check_layer(layer)
        plan.append((slot, layer))
    return Prepared(spec, arch, bench, plan, SecondMomentStore(None), build_s)


def bench_arch(prep: Prepared, args: argparse.Namespace, device: torch.device, *, first: bool) -> dict[str, Any]:
    """One timed edit of every slot of ``prep`` (the warm-up and the naive loop only when ``first``)."""
    rows = [bench_slot(prep.bench, slot, layer, args, prep.store, device, warm=first, arch=prep.arch)
            for slot, layer in prep.plan]
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


def second_moment_row(width: int, tokens: int, dense_max: int = 1 << 20, rank: int = 256) -> dict[str, Any]:
    """Run in a child process: accumulate C of ``tokens`` random ``width``-wide keys as the collector
    does (512 rows a batch, in place, in ``storage_dtype``: fp32 from 8192 wide), then the engine's
    ridge + Cholesky + solve (float64 workspace), unless the memory check refuses it or ``width`` >
    ``dense_max``; then the rank-``rank`` + diagonal solve. Peak RSS above the start."""
    from engine.admission import check_moment_memory, free_memory
    from engine.covariance import accumulate, moment_memory, storage_dtype
    from engine.errors import EngineError
    from engine.methods.refact.linalg import CHOLESKY_CACHE

    torch.manual_seed(0)
    torch.ones(8) @ torch.ones(8)
    base_kib = _peak_rss_kib()
    need = moment_memory(width)
    out: dict[str, Any] = {"width": width, "tokens": tokens, "storage": need.storage, "c_mib": need.store / 2**20,
                           "need_gib": need.total / 2**30, "line": need.line("cpu", free_memory("cpu"))}
    t0 = time.perf_counter()
    acc = torch.zeros(width, width, dtype=storage_dtype(width))
    for start in range(0, tokens, 512):
        accumulate(acc, torch.randn(min(512, tokens - start), width))
    c = acc.div_(tokens)
    out["accumulate_s"] = time.perf_counter() - t0
    out["accumulate_peak_mib"] = (_peak_rss_kib() - base_kib) / 1024
    k = torch.randn(width)
    out["factor_solve_s"] = None
    if width > dense_max:
        out["dense"] = f"skipped on this run (--mom-dense-max {dense_max})"
    else:
        try:
            check_moment_memory(need, "cpu")
            t0 = time.perf_counter()
            left_vector(c, k, ridge=1e-3)  # ridge: fewer rows than dimensions here
            out["factor_solve_s"] = time.perf_counter() - t0
            out["dense"] = "ok"
        except EngineError as exc:
            out["dense"] = f"refused: {exc}"
        CHOLESKY_CACHE.clear()
    out["peak_mib"] = (_peak_rss_kib() - base_kib) / 1024
    t0 = time.perf_counter()
    left_vector(c, k, ridge=1e-3, rank=rank)
    out["low_rank_s"], out["rank"] = time.perf_counter() - t0, rank
    out["low_rank_solve_mib"] = moment_memory(width, rank).solve / 2**20
    return out


def run_second_moment_child(width: int, tokens: int, dense_max: int = 1 << 20) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--mom-only", str(width), str(tokens), str(dense_max)], check=True,
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
            "", "| second moment | rows | accumulate s | ridge + Cholesky + solve s | peak extra memory | C size |",
            "|---|---|---|---|---|---|",
            f"| T5-XXL-sized key {mom['width']} | {mom['tokens']} | {mom['accumulate_s']:.1f} | "
            f"{mom['factor_solve_s'] or 0:.1f} | {mom['peak_mib']:.0f} MiB | {mom['c_mib']:.0f} MiB {mom['storage']} |",
            "", "- accumulation is linear in the rows (5,000 captions in SD3's unmasked format give about 75k prompt-token "
                "rows); the forward pass that produces the keys is not included.",
        ]
    lines += ["", SECTION_END]
    replace_section(path, "\n".join(lines), SECTION_START, SECTION_END, heading=SECTION_HEADING)


WIDTH_NAMES = {shape.config["intermediate_size"]: shape.model for shape in LLM_SHAPES.values()}


def write_llm_section(results: list[dict[str, Any]], moms: list[dict[str, Any]], summary: dict[str, Any],
                      path: Path) -> None:
    """The LLM rows and the C rows at each real width, in their own section."""
    lines = [
        LLM_SECTION_START, f"{LLM_SECTION_HEADING} (`benchmarks/edit_latency.py`)", "",
        f"- date: {summary['date']}; device: {summary['device']} ({summary['device_name']}); torch threads: "
        f"{summary['threads']}; load average at start: {summary['load']}, at the end: {summary.get('load_end', '?')} "
        "(2 cores shared with other sessions' work: absolute seconds are noisy, the ratio to SD1 less so)",
        f"- each LLM slot: the real model's hidden / intermediate widths, heads and KV heads, {summary['llm_blocks']} "
        f"blocks, the family's template, read at its last block; {summary['llm_steps']} v* step(s) timed at layer 0 "
        f"and scaled, like the T5 rows, to {summary['steps']} steps at the real default layer (7/12 of the depth) "
        "through the real deepest tap, the prefix forward scaled to that layer (marked est.). u from an identity C "
        "in the edit rows; C's cost is in the table below. SD1: the full CLIP-L encoder, measured.",
        "",
        "| run | encoder (real) | key width | slot@real layer: s per edit | ratio to SD1 | s/step |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        s0 = r["slots"][0]
        real = LLM_SHAPES[r["arch"]].model if r["arch"] in LLM_SHAPES else "CLIP-L"
        lines.append(f"| {r['spec']} | {real} | {s0['key_size']} | {_fmt_slots(r)} | {r['ratio']:.1f}x | "
                     f"{s0['seconds_per_step'] * 1000:.0f} ms |")
    if moms:
        lines += [
            "", f"C at each real width: {moms[0]['tokens']} random key rows accumulated as the collector does (512 a "
                "batch, in place, float64 products added into the fp32 store), then the engine's solve (the fp32 C "
                "upcast into one fp64 workspace, ridge 1e-3, Cholesky in place, solve) and the rank-256 + diagonal "
                "solve; peak is the child process's RSS above its start. Accumulation is linear in the rows.",
            "",
            "| key width | encoder | C (storage) | C + solve (figure) | accumulate s | peak after accumulating | "
            "dense Cholesky + solve s | peak | rank-256 solve s (fp64 workspace) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for m in moms:
            dense = f"{m['factor_solve_s']:.1f}" if m["factor_solve_s"] is not None else m["dense"]
            lines.append(
                f"| {m['width']} | {WIDTH_NAMES.get(m['width'], '')} | {m['c_mib']:.0f} MiB ({m['storage']}) | "
                f"{m['need_gib']:.1f} GiB | {m['accumulate_s']:.1f} | {m['accumulate_peak_mib']:.0f} MiB | {dense} | "
                f"{m['peak_mib']:.0f} MiB | {m['low_rank_s']:.1f} ({m['low_rank_solve_mib']:.0f} MiB) |")
    lines += ["", LLM_SECTION_END]
    replace_section(path, "\n".join(lines), LLM_SECTION_START, LLM_SECTION_END, heading=LLM_SECTION_HEADING)


def main() -> None:
    if len(sys.argv) >= 4 and sys.argv[1] == "--mom-only":
        print(json.dumps(second_moment_row(*(int(a) for a in sys.argv[2:5]))))
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
    parser.add_argument("--mom-widths", type=int, nargs="+", default=None,
                        help="key widths of the second-moment rows (default: --mom-width), e.g. the LLM widths")
    parser.add_argument("--mom-dense-max", type=int, default=1 << 20,
                        help="widest key whose dense Cholesky is timed (wider: low-rank only; a CPU takes ~10 min at 32768)")
    parser.add_argument("--llm-blocks", type=int, default=2, help="blocks of each LLM slot built (real widths)")
    parser.add_argument("--llm-steps", type=int, default=2, help="v* steps actually run on an LLM slot (then scaled)")
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
        "llm_blocks": args.llm_blocks, "llm_steps": args.llm_steps,
    }
    # LLM slots are built for their turn and dropped after it (six of them at real widths do not fit 24 GB)
    llm = [parse_spec(spec)[0] in LLM_SHAPES for spec in specs]
    preps = [None if is_llm else prepare_arch(spec, args, device) for spec, is_llm in zip(specs, llm)]
    runs: list[list[dict[str, Any]]] = [[] for _ in specs]
    for rep in range(args.repeats):
        for i, spec in enumerate(specs):
            prep = preps[i] or prepare_arch(spec, args, device)
            runs[i].append(bench_arch(prep, args, device, first=rep == 0))
            print(f"repeat {rep + 1}/{args.repeats} {prep.spec}: {_fmt_slots(runs[i][-1])}", flush=True)
            print(f"row {json.dumps(runs[i][-1])}", flush=True)
            del prep
    results = [combine(r, runs[0]) for r in runs]
    del preps
    widths = args.mom_widths or ([args.mom_width] if args.mom_width > 0 else [])
    moms = []
    for width in widths:
        moms.append(run_second_moment_child(width, args.mom_tokens, args.mom_dense_max))
        print(f"C {width}: {json.dumps(moms[-1])}", flush=True)
    mom = moms[0] if moms else None
    summary["load_end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())

    table = Table(title=f"ReFACT edit latency per family, random full-size encoders, {device.type}")
    for col in ("run", "slot", "layer", "key", "C first s", "edit s", "ms/step", "note"):
        table.add_column(col, justify="right")
    for r in results:
        for s in r["slots"]:
            table.add_row(r["spec"], s["slot"], str(s["layer"]), str(s["key_size"]), f"{s['stats_first_s']:.1f}",
                          f"{s['seconds_per_edit']:.2f}", f"{s['seconds_per_step'] * 1000:.0f}", s["note"][:40])
        table.add_row(r["spec"], "total", "", "", "", f"{r['seconds_per_edit']:.2f}", f"{r['ratio']:.2f}x SD1", "")
    Console().print(table)
    if not args.no_write and any(llm):
        write_llm_section(results, moms, summary, args.output)
    elif not args.no_write:
        write_section(results, mom, summary, args.output)
    print(json.dumps({
        "device": device.type, "steps": args.steps,
        "seconds_per_edit": {r["spec"]: r["seconds_per_edit"] for r in results},
        "ratio_to_sd1": {r["spec"]: r["ratio"] for r in results},
        "ratio_range": {r["spec"]: r["ratio_range"] for r in results}, "repeats": args.repeats,
        "slots": {r["spec"]: r["slots"] for r in results}, "second_moment": moms,
    }))


if __name__ == "__main__":
    main()
