"""Images/s of the evaluation generation path vs plain diffusers batched generation.

Both render the same prompts with the same batch size, steps and resolution on the same device,
from one freshly built random pipeline (``--size tiny`` on CPU, ``--size full`` = SD1.4 shapes on a
GPU). Writes/replaces the "Evaluation throughput" section of BENCHMARKS.md.

    .venv/bin/python benchmarks/eval_throughput.py [--size tiny|full] [--images 16] [--batch 8] [--steps 10]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from report import replace_section  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine.builder import build_pipeline  # noqa: E402
from engine.evaluation.config import GenerationConfig  # noqa: E402
from engine.evaluation.generation import WorkItem, generate, prepare_pipeline, resolution  # noqa: E402
from engine.models import load_model  # noqa: E402

PROMPTS = ["a photo of a cat", "canada's prime minister giving a speech", "a bowl of bananas", "a red car on a hill"]
MARK = "## Evaluation throughput"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _plain(pipe, prompts, seeds, cfg: GenerationConfig, h: int, w: int):
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    return pipe(prompts, generator=gens, num_inference_steps=cfg.steps, guidance_scale=cfg.guidance,
                height=h, width=w, output_type=cfg.output_type).images


def measure(size: str, n_images: int, batch: int, steps: int, repeats: int) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(build_pipeline(Path(tmp) / "pipe", size=size), device=str(device), with_pipeline=True)
    pipe = model.pipeline
    cfg = GenerationConfig(steps=steps, batch_size=batch, output_type="pil")
    prepare_pipeline(pipe, device, cfg.fp16)
    h, w = resolution(pipe, cfg)
    items = [WorkItem(PROMPTS[i % len(PROMPTS)], i) for i in range(n_images)]
    generate(pipe, items[:batch], cfg)  # warm-up
    ours, plain = [], []
    for _ in range(repeats):  # interleaved so drift hits both
        _sync(device)
        t = time.perf_counter()
        generate(pipe, items, cfg)
        _sync(device)
        ours.append(time.perf_counter() - t)
        _sync(device)
        t = time.perf_counter()
        for i in range(0, n_images, batch):
            chunk = items[i : i + batch]
            _plain(pipe, [it.prompt for it in chunk], [it.seed for it in chunk], cfg, h, w)
        _sync(device)
        plain.append(time.perf_counter() - t)
    ours_ips, plain_ips = n_images / min(ours), n_images / min(plain)
    return {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
            "size": size, "images": n_images, "batch": batch, "steps": steps, "resolution": f"{h}x{w}",
            "unet_dtype": str(pipe.unet.dtype).replace("torch.", ""), "ours": ours_ips, "plain": plain_ips,
            "ratio": ours_ips / plain_ips}


def write_section(r: dict, path: Path) -> str:
    section = (
        f"{MARK}\n\n"
        f"`benchmarks/eval_throughput.py --size {r['size']}` on {r['device']}, {dt.date.today().isoformat()}: "
        f"{r['images']} images, batch {r['batch']}, {r['steps']} steps, {r['resolution']}, UNet {r['unet_dtype']}, "
        "best of the repeats.\n\n"
        "| path | images/s |\n|---|---|\n"
        f"| refact eval generation (per-image CPU generators, fp32 text encoder) | {r['ours']:.3f} |\n"
        f"| plain diffusers `pipe(prompts, generator=[...])` | {r['plain']:.3f} |\n"
        f"| ratio (target >= 0.90) | {r['ratio']:.3f} |\n"
    )
    replace_section(path, section, MARK)
    return section


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("tiny", "full"), default="tiny")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    a = ap.parse_args()
    print(write_section(measure(a.size, a.images, a.batch, a.steps, a.repeats), a.out))


if __name__ == "__main__":
    main()
