"""`refact plan` against measured loads: peak resident host memory of loading full-size random builds
(`refact model build --size full`, stored fp32) through ``load_model(dtype=...)`` in a fresh process,
minus that process's resident memory before the load, versus the plan's prediction:

- ``encoders``: ``with_pipeline=False`` (what `run` and `eval --text-only` load) vs "load encoders (host)";
- ``pipeline``: the whole pipeline (what image `eval` and `bench` load) vs "load (host)".

Each load runs in its own process with one thread. Prints a table and a final JSON line; the builds are
deleted at the end (``--keep`` keeps them). Check ``df -h`` first: an sd1 build takes about 4.3 GB.

    .venv/bin/python benchmarks/plan_check.py [--arch sd1 [--arch sdxl]] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DTYPES = ("float32", "float16", "bfloat16")
# VmHWM, not ru_maxrss: the latter keeps the parent's resident size at fork across exec. Every tensor
# is touched after the load (one byte per page): weights loaded in their stored dtype stay mmap-backed
# and would not count until the first forward pass reads them.
CHILD = r"""
import sys, torch
torch.set_num_threads(1)
from engine.models import load_model
import transformers, diffusers  # noqa: F401 - imported before the baseline is taken
def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key))
before = status("VmRSS")
m = load_model(sys.argv[1], device="cpu", with_pipeline=sys.argv[3] == "pipeline", dtype=sys.argv[2])
mods = [getattr(m.pipeline, n) for n in m.pipeline.components] if m.pipeline is not None else [s.text_encoder for s in m.slots]
for mod in mods:
    if isinstance(mod, torch.nn.Module):
        for t in mod.state_dict().values():
            if t.numel():
                int(t.detach().reshape(-1).view(torch.uint8)[::4096].sum())
print(before, status("VmHWM"), status("VmRSS"))
"""
PEAK_KEY = {"encoders": "load encoders (host)", "pipeline": "load (host)"}


def measure(folder: Path, dtype: str, what: str) -> dict[str, float]:
    """One load in a fresh process: the plan's figure and the measured peak / held memory (bytes)."""
    from refact_tui.services.plan import plan_model

    planned = plan_model(folder, dtype).peaks[PEAK_KEY[what]]
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), dtype, what], cwd=ROOT, capture_output=True,
                         text=True, check=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                                     "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    before, peak, after = map(int, out.stdout.split()[-3:])
    return {"planned": planned, "peak_delta": peak - before, "held_delta": after - before,
            "ratio_peak": (peak - before) / planned, "seconds": round(time.perf_counter() - t, 1)}


def main() -> None:
    from engine.builder import build_pipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", action="append", help="full-size build(s) to check (default: sd1)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the builds (and reuse one found in --workdir)")
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="plan-check-"))
    rows: list[dict] = []
    try:
        for arch in a.arch or ["sd1"]:
            t = time.perf_counter()
            folder = work / arch
            if not (a.keep and (folder / "model_index.json").is_file()):
                build_pipeline(folder, size="full", seed=0, arch=arch)
                print(f"built full {arch} in {time.perf_counter() - t:.0f} s", flush=True)
            for what in ("encoders", "pipeline"):
                for dtype in DTYPES:
                    r = {"arch": arch, "load": what, "dtype": dtype, **measure(folder, dtype, what)}
                    rows.append(r)
                    print(json.dumps(r), flush=True)
            if not a.keep:
                shutil.rmtree(folder)
    finally:
        if not a.keep and a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    mib = 2 ** 20
    print(f"{'arch':<6}{'load':<10}{'dtype':<10}{'plan MiB':>10}{'peak MiB':>10}{'held MiB':>10}{'peak/plan':>11}")
    for r in rows:
        print(f"{r['arch']:<6}{r['load']:<10}{r['dtype']:<10}{r['planned'] / mib:>10.0f}{r['peak_delta'] / mib:>10.0f}"
              f"{r['held_delta'] / mib:>10.0f}{r['ratio_peak']:>11.2f}")
    print(json.dumps({"plan_check": rows}))


if __name__ == "__main__":
    main()
