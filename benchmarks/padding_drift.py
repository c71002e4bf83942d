"""What an edit does to the padding every prompt carries: C over attended tokens (the paper's) vs C over
every position the denoiser reads (engine.covariance.Positions.READ), on tiny random SD2 / SDXL builds.

For each C, one ReFACT edit is applied to every text-encoder slot, then the pipeline's own
``encode_prompt`` of an unrelated prompt is compared with the unedited one: the mean relative L2 per
position over its real tokens (BOS/EOS included) and over its padding positions. The edit's own
text-space P(target) (first slot, against the frozen base features) shows what it costs the edit.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/padding_drift.py [--arch sd2 sdxl] [--weight-decay 0 0.1]

Prints a table and a final JSON line (no timing in it: the numbers are deterministic on CPU) and
writes the "Padding drift" section of BENCHMARKS.md (``--no-write`` to skip).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

MARK = "## Padding drift: C over attended vs read positions"
UNRELATED = "A bowl of fresh fruit on a table"
REQUEST = dict(prompt="The President of the United States", subject="President of the United States",
               source="Joe Biden", target="Donald Trump")


def _embeds(model, prompt: str) -> torch.Tensor:
    out = model.pipeline.encode_prompt(prompt=prompt, device="cpu", num_images_per_prompt=1,
                                       do_classifier_free_guidance=False)
    return out[0][0].detach().double()


def _p_target(model, request, hp) -> float:
    from engine.base_weights import base_fc2_of
    from engine.evaluation.text_metrics import FeatureCache, text_metrics

    slot = model.slots[0]
    frozen = FeatureCache.frozen(slot, base_fc2_of(slot))
    return text_metrics(slot, frozen, request, similarity=hp.similarity, temperature=hp.temperature).p_target


def measure(path: Path, positions, weight_decay: float) -> dict[str, float]:
    from engine.covariance import SecondMomentStore, default_corpus_path
    from engine.methods.refact.hparams import ReFACTHParams
    from engine.methods.refact.model_edit import apply_model_edit
    from engine.models import load_model
    from engine.request import EditRequest

    model = load_model(path, device="cpu")
    request = EditRequest(**REQUEST)
    hp = ReFACTHParams(layer=1, max_steps=40, weight_decay=weight_decay)
    n_real = len(model.tokenizer(UNRELATED)["input_ids"])
    before = _embeds(model, UNRELATED)
    store = SecondMomentStore(None, positions=positions)
    apply_model_edit(model, request, hp, moments=store, corpus=default_corpus_path(), n_samples=300)
    after = _embeds(model, UNRELATED)
    rel = (after - before).norm(dim=-1) / before.norm(dim=-1).clamp_min(1e-12)
    return {"real": float(rel[:n_real].mean()), "padding": float(rel[n_real:].mean()),
            "p_target": _p_target(model, request, hp)}


def main() -> None:
    from engine.builder import build_pipeline
    from engine.covariance import Positions

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=["sd2", "sdxl"])
    ap.add_argument("--weight-decay", nargs="+", type=float, default=[0.0, 0.1])
    ap.add_argument("--no-write", action="store_true", help="Do not update BENCHMARKS.md.")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch:
            path = build_pipeline(Path(tmp) / arch, "tiny", 0, arch=arch)
            for wd in args.weight_decay:
                for positions in (Positions.ATTENDED, Positions.READ):
                    m = measure(path, positions, wd)
                    rows.append({"arch": arch, "weight_decay": wd, "C": positions.value, **m})
    print(f"{'arch':<6}{'wd':>5}  {'C':<9}{'real drift':>11}{'pad drift':>11}{'P(target)':>11}")
    for r in rows:
        print(f"{r['arch']:<6}{r['weight_decay']:>5g}  {r['C']:<9}{r['real']:>11.4f}{r['padding']:>11.4f}"
              f"{r['p_target']:>11.3f}")
    if not args.no_write:
        _write(rows)
    print(json.dumps({"padding_drift": rows}))


def _write(rows: list[dict]) -> None:
    from report import replace_section  # benchmarks/report.py, next to this script

    lines = [MARK, "", f"`benchmarks/padding_drift.py` on tiny random builds ({UNRELATED!r} vs unedited, "
             "relative L2 per position of the pipeline's `encode_prompt`; one edit, layer 1, 40 steps; "
             "P(target): the edit prompt in text space).", "",
             "| pipeline | weight decay | C over | real-token drift | padding drift | P(target) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['arch']} | {r['weight_decay']:g} | {r['C']} | {r['real']:.4f} | {r['padding']:.4f} | "
              f"{r['p_target']:.3f} |" for r in rows]
    replace_section(Path(__file__).resolve().parents[1] / "BENCHMARKS.md", "\n".join(lines) + "\n", MARK)


if __name__ == "__main__":
    main()
