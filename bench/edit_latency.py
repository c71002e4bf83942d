"""Time one ReFACT edit end to end on an SD-1.4-sized random CLIP text encoder.

For each layer: collect C once on a small corpus (cached), then time key + v* steps + insertion
with wd 0 and threshold 1.0 so all steps run. Also times a naive loop shaped like the reference
(full 12-layer forward of prompts padded to 77 with a hook, targets re-encoded every step) and
prints the per-step ratio. Writes a section of BENCHMARKS.md.

    .venv/bin/python bench/edit_latency.py --device cpu [--layers 7 9] [--naive-steps 20]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from engine.adapters import adapter_for  # noqa: E402
from engine.covariance import SecondMomentStore, default_corpus_path  # noqa: E402
from engine.hparams import ReFACTHParams  # noqa: E402
from engine.refact import apply_edit  # noqa: E402
from engine.request import EditRequest  # noqa: E402
from engine.tokens import locate_all, rewriting_templates  # noqa: E402

SECTION_START = "<!-- edit_latency:start -->"
SECTION_END = "<!-- edit_latency:end -->"
REQUEST = EditRequest(prompt="the prince of wales", source="prince charles", target="prince william")
FALLBACK_WORDS = (
    "a photo of the man woman dog cat red blue green city street park beach house car tree with in on at "
    "painting portrait drawing old young small large bowl fruit table window people sitting standing"
).split()


@dataclass
class Model:
    text_encoder: torch.nn.Module
    tokenizer: Any
    adapter: Any


def build_full_encoder(device: torch.device, seed: int) -> Model:
    """SD-1.4 text encoder shapes (CLIPTextModel 768/3072/12 layers) with random weights."""
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    try:
        from engine.builder import build_clip_tokenizer, pipeline_configs

        kwargs = dict(pipeline_configs("full").text_encoder)
        tokenizer = build_clip_tokenizer()
    except ImportError:
        kwargs = dict(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu",
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        )
        tokenizer = AutoTokenizer.from_pretrained(str(ROOT.parent / "shared" / "data" / "parity" / "model"))
    kwargs.pop("projection_dim", None)  # SD uses CLIPTextModel: no projection
    torch.manual_seed(seed)
    encoder = CLIPTextModel(CLIPTextConfig(**kwargs)).to(device).eval()
    return Model(encoder, tokenizer, adapter_for(encoder))


def corpus_file(lines: int) -> Path:
    """The shipped caption corpus if present, else a generated one (either way ``lines`` lines are used)."""
    path = default_corpus_path()
    if path.is_file():
        return path
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(lines):
        n = int(torch.randint(4, 16, (1,), generator=gen))
        out.append(" ".join(FALLBACK_WORDS[int(i)] for i in torch.randint(0, len(FALLBACK_WORDS), (n,), generator=gen)))
    tmp = Path(tempfile.mkdtemp(prefix="refact-bench-")) / "corpus.txt"
    tmp.write_text("\n".join(out) + "\n", encoding="utf-8")
    return tmp


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def naive_steps(model: Model, hparams: ReFACTHParams, steps: int, device: torch.device) -> float:
    """Seconds per step of a reference-shaped loop: every step a full forward of the 10 prompts
    padded to 77 with a delta hook, the 2 targets re-encoded (padded to 77), backward, Adam, clamp."""
    adapter, tok = model.adapter, model.tokenizer
    located = locate_all(tok, rewriting_templates(hparams.templates), REQUEST.prompt, None, 77)
    enc = tok([p.text for p in located], padding="max_length", max_length=77, return_tensors="pt").to(device)
    tgt = tok([REQUEST.target, REQUEST.source], padding="max_length", max_length=77, return_tensors="pt").to(device)
    rows = torch.arange(len(located), device=device)
    idx = torch.tensor([p.index for p in located], device=device)
    delta = torch.zeros(adapter.hidden_size, device=device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hparams.lr)
    active = {"on": True}

    def hook(_m, _i, out):
        if not active["on"]:
            return out
        out = out.clone()
        out[rows, idx] += delta
        return out

    handle = adapter.mlp(hparams.layer).register_forward_hook(hook)
    v0_norm = 1.0
    try:
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            active["on"] = False
            with torch.no_grad():
                targets = model.text_encoder(**tgt).pooler_output
            active["on"] = True
            feats = model.text_encoder(**enc).pooler_output
            scores = -torch.linalg.vector_norm(feats[:, None] - targets[None], dim=-1)
            loss = -torch.log_softmax(scores, dim=-1)[:, 0].mean()
            opt.zero_grad()
            loss.backward(inputs=[delta])
            opt.step()
            with torch.no_grad():
                if delta.norm() > hparams.clamp_factor * v0_norm:
                    delta[...] = delta * hparams.clamp_factor * v0_norm / delta.norm()
        sync(device)
        return (time.perf_counter() - start) / steps
    finally:
        handle.remove()


def bench_layer(model: Model, layer: int, args: argparse.Namespace, store: SecondMomentStore, corpus: Path,
                device: torch.device) -> dict[str, Any]:
    hp = ReFACTHParams(layer=layer, max_steps=args.steps, weight_decay=0.0, prob_threshold=1.0)
    t0 = time.perf_counter()
    store.get(model, layer, corpus=corpus, n_samples=args.corpus_lines)
    stats_first = time.perf_counter() - t0
    w = model.adapter.fc2(layer).weight
    saved = w.detach().clone()
    # warm-up edit (allocator, kernels), then the timed one; weights restored in between
    apply_edit(model, REQUEST, hp.with_overrides(max_steps=3), stats=store, corpus=corpus, n_samples=args.corpus_lines)
    with torch.no_grad():
        w.copy_(saved)
    sync(device)
    t0 = time.perf_counter()
    res = apply_edit(model, REQUEST, hp, stats=store, corpus=corpus, n_samples=args.corpus_lines)
    sync(device)
    total = time.perf_counter() - t0
    with torch.no_grad():
        w.copy_(saved)
    per_step = res.timings.optimize_s / res.steps_run
    naive = naive_steps(model, hp, args.naive_steps, device) if args.naive_steps > 0 else float("nan")
    return {
        "layer": layer,
        "stats_first_s": stats_first,
        "stats_cached_s": res.timings.stats_s,
        "key_s": res.timings.key_s,
        "optimize_s": res.timings.optimize_s,
        "insert_s": res.timings.insert_s,
        "seconds_per_edit": total,
        "seconds_per_step": per_step,
        "steps": res.steps_run,
        "naive_seconds_per_step": naive,
        "naive_steps_timed": args.naive_steps,
        "speedup_per_step": naive / per_step,
        "naive_edit_estimate_s": naive * res.steps_run,
        "verify_error": res.verify_error,
    }


def write_section(results: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    lines = [
        SECTION_START,
        "## Edit latency (`bench/edit_latency.py`)",
        "",
        f"- date: {summary['date']}; device: {summary['device']} ({summary['device_name']}); torch threads: "
        f"{summary['threads']}; load average at start: {summary['load']}",
        "- model: random CLIPTextModel with SD-1.4 shapes (768 wide, 3072 MLP, 12 layers); request "
        "'the prince of wales' -> 'prince william'; wd 0, threshold 1.0 (all steps run); C from the cache",
        "",
        "| layer | edit s | s/step | steps | key s | optimize s | insert s | naive s/step (steps timed) | speedup/step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['layer']} | {r['seconds_per_edit']:.2f} | {r['seconds_per_step'] * 1000:.1f} ms | {r['steps']} | "
            f"{r['key_s']:.3f} | {r['optimize_s']:.2f} | {r['insert_s']:.3f} | "
            f"{r['naive_seconds_per_step']:.3f} ({r['naive_steps_timed']}) | {r['speedup_per_step']:.0f}x |"
        )
    lines += ["", SECTION_END]
    block = "\n".join(lines)
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    if SECTION_START in text and SECTION_END in text:
        head, rest = text.split(SECTION_START, 1)
        text = head + block + rest.split(SECTION_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--layers", type=int, nargs="+", default=[7, 9])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--naive-steps", type=int, default=None, help="steps of the naive loop (default: --steps)")
    parser.add_argument("--corpus-lines", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args()
    if args.naive_steps is None:
        args.naive_steps = args.steps
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")

    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    model = build_full_encoder(device, args.seed)
    corpus = corpus_file(args.corpus_lines)
    store = SecondMomentStore(None)
    results = [bench_layer(model, layer, args, store, corpus, device) for layer in args.layers]

    table = Table(title=f"ReFACT edit latency, SD-1.4-sized text encoder, {device.type}")
    for col in ("layer", "C (first) s", "edit s", "ms/step", "steps", "naive s/step", "speedup/step"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            str(r["layer"]), f"{r['stats_first_s']:.1f}", f"{r['seconds_per_edit']:.2f}",
            f"{r['seconds_per_step'] * 1000:.1f}", str(r["steps"]), f"{r['naive_seconds_per_step']:.3f}",
            f"{r['speedup_per_step']:.0f}x",
        )
    Console().print(table)
    summary = {
        "date": dt.date.today().isoformat(),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "load": load,
    }
    if not args.no_write:
        write_section(results, summary, args.output)
    n = len(results)
    print(json.dumps({
        "seconds_per_edit": sum(r["seconds_per_edit"] for r in results) / n,
        "seconds_per_step": sum(r["seconds_per_step"] for r in results) / n,
        "steps": results[0]["steps"],
        "device": device.type,
        "naive_seconds_per_step": sum(r["naive_seconds_per_step"] for r in results) / n,
        "layers": {str(r["layer"]): r for r in results},
    }))


if __name__ == "__main__":
    main()
