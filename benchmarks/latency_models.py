"""Random full-size encoder slots for the edit-latency benchmark (built in memory, never saved).

Each family's encoders get the real shapes from ``engine.builder`` (CLIP-L, OpenCLIP-bigG,
T5-v1.1-XXL) and are turned into slots exactly as ``engine.models.load_model`` does for a pipeline
folder (same adapter, readout, fp32 editable matrices). T5-XXL in fp32 is 19 GB, more than this
box has, so the T5 slot keeps XXL's widths (d_model 4096, d_ff 10240, 64 heads, vocab 32128) with
only ``t5_blocks`` of its 24 blocks; the benchmark scales its measured times to the real depth.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from engine.builder import make_text_encoder, make_tokenizer, pipeline_configs


@dataclass
class BenchModel:
    """A LoadedModel of random full-size slots plus what was cut to fit (slot -> real layer count)."""

    model: object  # engine.models.LoadedModel
    real_layers: dict[str, int]


def build_bench_model(arch: str, device: torch.device, *, t5_blocks: int = 2, seed: int = 0) -> BenchModel:
    """The encoder slots of ``arch`` at full size (T5 cut to ``t5_blocks`` blocks), on ``device``."""
    from engine.models import LoadedModel, _make_slot

    cfg = pipeline_configs("full", arch)
    slots, real = [], {}
    for i, (name, spec) in enumerate(cfg.encoders.items()):
        if spec.model_class == "T5EncoderModel":
            real[name] = int(spec.config["num_layers"])
            spec = replace(spec, config={**spec.config, "num_layers": t5_blocks})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + i)
            encoder = make_text_encoder(spec).to(device)
        slot = _make_slot(name, encoder, make_tokenizer(spec.tokenizer), arch, None, None)
        real.setdefault(name, slot.num_layers)
        slots.append(slot)
    model = LoadedModel(source=f"random full-size {arch}", path=Path("."), kind="sd-pipeline", slots=slots,
                        pipeline=None, device=device, pipeline_family=arch)
    return BenchModel(model, real)


def describe(bench: BenchModel) -> dict[str, str]:
    """Slot -> "Class hidden/key, built/real layers" for the report."""
    out = {}
    for slot in bench.model.slots:
        a = slot.adapter
        out[slot.name] = (f"{type(slot.text_encoder).__name__} {a.hidden_size}/{a.key_size}, "
                          f"{slot.num_layers}/{bench.real_layers[slot.name]} layers, readout {a.readout.spec()}")
    return out
