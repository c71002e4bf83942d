"""How exactly an exported edit survives a half-precision base: W k_e against v* after loading the LoRA
unmerged (PEFT keeps the fp32 factors beside the bf16/fp16 weight) versus merged into the weight.

Cases: the ReFACT parity edit (shared/data/parity: the reference code's k*, u, v* on a tiny CLIP), and a
ReFACT-form rank-one insertion (r = (v* - W k) / (u . k), u = k / |k|) on layer 6 fc2 of a full-size
CLIP-L random build, with |v* - W k| = |W k|. Prints a table and a final JSON line; CPU, one thread.

    .venv/bin/python benchmarks/adapter_precision.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
PARITY = ROOT.parent / "shared" / "data" / "parity"


def _peft_linear(w: torch.Tensor, up: torch.Tensor, down: torch.Tensor, dtype: torch.dtype, merge: bool):
    """A Linear holding ``w`` in ``dtype`` with the LoRA (up @ down, fp32) loaded through PEFT."""
    from peft import LoraConfig, inject_adapter_in_model

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc2 = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)

    model = Holder()
    model.fc2.weight.data = w.clone().to(dtype)
    rank = up.shape[1]
    model = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=["fc2"]), model)
    layer = model.fc2
    layer.lora_A["default"].weight.data = down.clone().float()
    layer.lora_B["default"].weight.data = up.clone().float()
    if merge:
        layer.merge(safe_merge=True)
    return layer


def _errors(w: torch.Tensor, up: torch.Tensor, down: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> dict:
    rows = {}
    ref = (w.double() + up.double() @ down.double()) @ k.double()
    rows["fp32 merged"] = float(((w + up @ down) @ k - v).norm() / v.norm())
    rows["fp64 exact"] = float((ref - v.double()).norm() / v.double().norm())
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        for how, merge in (("unmerged", False), ("merged", True)):
            layer = _peft_linear(w, up, down, dtype, merge)
            with torch.no_grad():
                out = layer(k.to(dtype)[None])[0].float()
            rows[f"{name} {how}"] = float((out - v).norm() / v.norm())
        # the base alone in this dtype: the floor any half-precision layer has on this key
        rows[f"{name} base floor"] = float(((w.to(dtype).float() - w) @ k).norm() / v.norm())
    return rows


def parity_case() -> dict | None:
    from safetensors.torch import load_file

    if not (PARITY / "expected.safetensors").is_file():
        return None
    exp = load_file(str(PARITY / "expected.safetensors"))
    weights = load_file(str(PARITY / "model" / "model.safetensors"))
    key = next(k for k in weights if k.endswith("layers.2.mlp.fc2.weight"))
    w = weights[key].float()
    k, u, v = exp["k_star"].float(), exp["u"].float(), exp["v_star"].float()
    r = (v - w @ k) / (u @ k)
    return _errors(w, r[:, None], u[None, :], k, v)


def clip_l_case() -> dict:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    cfg = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=7, num_attention_heads=12,
                         hidden_act="quick_gelu")
    model = CLIPTextModel(cfg).eval()
    fc2 = dict(model.named_modules())[next(n for n, _ in model.named_modules() if n.endswith("layers.6.mlp.fc2"))]
    seen = {}
    def grab(module, inputs, output) -> None:
        seen["k"] = inputs[0][0, 5].detach().clone()

    fc2.register_forward_hook(grab)
    with torch.no_grad():
        model(input_ids=torch.randint(0, cfg.vocab_size, (1, 12), generator=torch.Generator().manual_seed(1)))
    w, k = fc2.weight.detach().float(), seen["k"].float()
    wk = w @ k
    direction = torch.randn(wk.shape, generator=torch.Generator().manual_seed(2))
    v = wk + direction / direction.norm() * wk.norm()
    u = k / k.norm()
    r = (v - wk) / (u @ k)
    return _errors(w, r[:, None], u[None, :], k, v)


def main() -> None:
    cases = {"parity (tiny CLIP, reference edit)": parity_case(), "CLIP-L full-size random, layer 6": clip_l_case()}
    cases = {k: v for k, v in cases.items() if v is not None}
    names = list(next(iter(cases.values())))
    print(f"{'|W k_e - v*| / |v*|':<22}" + "".join(f"{c[:34]:>36}" for c in cases))
    for n in names:
        print(f"{n:<22}" + "".join(f"{cases[c][n]:>36.3e}" for c in cases))
    print(json.dumps({"adapter_precision": cases}))


if __name__ == "__main__":
    sys.exit(main())
