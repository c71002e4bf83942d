"""`refact plan` against a measured load: peak resident memory of loading a full-size CLIP-L text encoder
(SD1's, random weights, stored fp32) through ``load_model(with_pipeline=False, dtype=...)`` in a fresh
process, minus that process's resident memory before the load, versus the plan's "load encoders (host)"
(weights in the dtype, the base snapshot of the editable matrices, and the stored pages read while
converting). Prints a table and a final JSON line.

    .venv/bin/python benchmarks/plan_check.py [WORKDIR]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = r"""
import os, resource, sys, torch
torch.set_num_threads(1)
from engine.models import load_model
import transformers, diffusers  # noqa: F401 - imported before the baseline is taken
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS"))
before = rss()
m = load_model(sys.argv[1], device="cpu", with_pipeline=False, dtype=sys.argv[2])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(before, peak, rss())
"""


def build(folder: Path) -> Path:
    """A pipeline folder holding only SD1's full-size text encoder and the tiny build's tokenizer."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.builder import build_pipeline

    tiny = build_pipeline(folder / "tiny", "tiny", 0)
    out = folder / "full_te"
    out.mkdir()
    shutil.copy(tiny / "model_index.json", out / "model_index.json")
    shutil.copytree(tiny / "tokenizer", out / "tokenizer")
    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
    CLIPTextModel(cfg).save_pretrained(out / "text_encoder", safe_serialization=True)
    return out


def main() -> None:
    from refact_tui.services.plan import plan_model

    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="plan-check-"))
    folder = build(work)
    rows = {}
    for dtype in ("float32", "bfloat16"):
        p = plan_model(folder, dtype)
        planned = p.peaks["load encoders (host)"]
        out = subprocess.run([sys.executable, "-c", CHILD, str(folder), dtype], cwd=ROOT, capture_output=True,
                             text=True, check=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                                         "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
        before, peak, after = map(int, out.stdout.split()[-3:])
        rows[dtype] = {"planned": planned, "peak_delta": peak - before, "held_delta": after - before,
                       "ratio_peak": (peak - before) / planned, "ratio_held": (after - before) / planned}
    print(f"{'dtype':<10}{'planned MiB':>14}{'peak MiB':>12}{'held MiB':>12}{'peak/plan':>11}{'held/plan':>11}")
    for d, r in rows.items():
        print(f"{d:<10}{r['planned'] / 2**20:>14.1f}{r['peak_delta'] / 2**20:>12.1f}{r['held_delta'] / 2**20:>12.1f}"
              f"{r['ratio_peak']:>11.2f}{r['ratio_held']:>11.2f}")
    print(json.dumps({"plan_check": rows}))


if __name__ == "__main__":
    main()
