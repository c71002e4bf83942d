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


@dataclass(frozen=True)
class LLMShape:
    """A pipeline's decoder-LM text encoder at its real widths (attention and MLP), cut to a few blocks.

    ``real_tap``: the deepest block whose output the pipeline reads (``hidden_states[real_tap + 1]``);
    the v* steps run from the edited layer to it, so the measured times are scaled to that span.
    """

    model: str  # the real encoder
    model_class: str  # transformers class built (text part only)
    slot: str
    config: dict
    real_layers: int
    real_tap: int


# Real shapes from the models' config.json (hidden / intermediate / heads / kv heads / head dim).
LLM_SHAPES: dict[str, LLMShape] = {
    "lumina2": LLMShape("Gemma-2-2B", "Gemma2Model", "text_encoder", dict(
        hidden_size=2304, intermediate_size=9216, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
        query_pre_attn_scalar=256, sliding_window=4096, attn_logit_softcapping=50.0, final_logit_softcapping=30.0), 26, 24),
    "z-image": LLMShape("Qwen3-4B", "Qwen3Model", "text_encoder", dict(
        hidden_size=2560, intermediate_size=9728, num_attention_heads=32, num_key_value_heads=8, head_dim=128), 36, 34),
    "cogview4": LLMShape("GLM-4-9B", "GlmModel", "text_encoder", dict(
        hidden_size=4096, intermediate_size=13696, num_attention_heads=32, num_key_value_heads=2, head_dim=128,
        partial_rotary_factor=0.5), 40, 38),
    "hidream": LLMShape("Llama-3.1-8B", "LlamaModel", "text_encoder_4", dict(
        hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8), 32, 31),
    "qwen-image": LLMShape("Qwen2.5-VL-7B (text)", "Qwen2Model", "text_encoder", dict(
        hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4), 28, 27),
    "flux2": LLMShape("Mistral-Small-3.1-24B (text)", "MistralModel", "text_encoder", dict(
        hidden_size=5120, intermediate_size=32768, num_attention_heads=32, num_key_value_heads=8, head_dim=128), 40, 29),
}


def _llm_tokenizer(arch: str, slot: str):
    """The family's own tiny tokenizer (its chat template and specials), or the Qwen-style one."""
    from engine.builder.pipelines import make_tokenizer

    try:
        kind = pipeline_configs("tiny", arch).encoders[slot].tokenizer
    except Exception:  # a family the builder does not make yet: its template is then plain
        kind = "qwen"
    return make_tokenizer(kind)


def build_llm_bench_model(arch: str, device: torch.device, *, blocks: int = 2, seed: int = 0) -> BenchModel:
    """``arch``'s LLM slot with the real widths and ``blocks`` blocks, its template, read at the last block."""
    import transformers

    from engine.models import LoadedModel, make_slot
    from engine.readout import Readout

    shape = LLM_SHAPES[arch]
    tokenizer = _llm_tokenizer(arch, shape.slot)
    model_cls = getattr(transformers, shape.model_class)
    inner = getattr(tokenizer, "tokenizer", tokenizer)  # FLUX.2's is a processor around its tokenizer
    config = model_cls.config_class(**shape.config, num_hidden_layers=blocks, vocab_size=max(len(inner), 1536),
                                    max_position_embeddings=4096, pad_token_id=inner.pad_token_id or 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = model_cls(config).eval().to(device)
    slot = make_slot(shape.slot, encoder, tokenizer, arch, None, Readout("hidden", layers=(-1,)))
    model = LoadedModel(source=f"random {shape.model} widths, {blocks} blocks", path=Path("."), kind="sd-pipeline",
                        slots=[slot], pipeline=None, device=device, pipeline_family=arch)
    return BenchModel(model, {shape.slot: shape.real_layers})
