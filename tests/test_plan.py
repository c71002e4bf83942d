"""`refact plan` reads parameter counts and bytes from safetensors headers without loading: they equal
what a load in that dtype holds; C per slot is the editable matrix's input width squared, fp32."""

from __future__ import annotations

import pytest
import torch


def _held_bytes(module: torch.nn.Module) -> tuple[int, int]:
    """(elements, bytes) of every distinct tensor of a module's state dict (tied weights once)."""
    seen, n, b = set(), 0, 0
    for t in module.state_dict().values():
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        n, b = n + t.numel(), b + t.numel() * t.element_size()
    return n, b


@pytest.mark.parametrize("arch", ["sd1", "flux"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_plan_matches_what_a_load_in_that_dtype_holds(arch, dtype, pipeline_dir_for):
    from diffusers import DiffusionPipeline

    from engine.models import load_model
    from refact_tui.services.plan import plan_model

    folder = pipeline_dir_for(arch)
    plan = plan_model(folder, dtype)
    pipe = DiffusionPipeline.from_pretrained(str(folder), local_files_only=True, dtype=getattr(torch, dtype))
    for c in plan.components:
        n, b = _held_bytes(getattr(pipe, c.name))
        assert (c.params, c.bytes) == (n, b), c.name
    held = sum(_held_bytes(getattr(pipe, c.name))[1] for c in plan.components)
    assert plan.total_bytes == held
    # converting from the fp32 files keeps one component's pages while its dtype copies are made
    from refact_tui.services.plan import LOAD_OVERHEAD

    stored = max(c.bytes for c in plan_model(folder, "float32").components)
    model = load_model(folder, device="cpu", with_pipeline=False, dtype=dtype)
    snap = sum(t.numel() * t.element_size() for s in model.slots for t in s.base_fc2.values())
    upcast = sum(m.weight.numel() * 2 for s in model.slots for m in s.fc2_modules().values()
                 if m.weight.dtype == torch.float32) if dtype != "float32" else 0
    assert plan.peaks["load (host)"] == held + upcast + snap + (0 if dtype == "float32" else stored) + LOAD_OVERHEAD
    model = load_model(folder, device="cpu", with_pipeline=False)
    assert [s.slot for s in plan.slots] == model.slot_names
    for s in plan.slots:
        fc2 = list(model.slot(s.slot).fc2_modules().values())
        assert (s.layers, s.width, s.out_width) == (len(fc2), fc2[0].in_features, fc2[0].out_features)
        assert s.c_bytes == fc2[0].in_features ** 2 * 4
        assert s.editable_params == sum(m.weight.numel() for m in fc2)


def test_plan_refuses_bad_input_in_one_line(tmp_path, model_dir):
    from typer.testing import CliRunner

    from refact_tui.cli.main import app

    runner = CliRunner()
    for args, text in [(["--model", str(model_dir), "--dtype", "float8"], "unknown dtype"),
                       (["--model", str(tmp_path / "none")], "is not a model folder")]:
        r = runner.invoke(app, ["plan", *args])
        assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 and text in r.output, r.output
    r = runner.invoke(app, ["plan", "--model", str(model_dir), "--dtype", "float16", "--json"])
    assert r.exit_code == 0 and '"dtype": "float16"' in r.output


@pytest.mark.parametrize("arch, ratio", [("sd1", 1.0), ("sdxl", 2.34), ("flux", 867.6)])
def test_plan_names_the_measured_time_per_edit_of_the_pipeline_class(arch, ratio, pipeline_dir_for, tmp_path):
    """The time line comes from the pipeline class in model_index.json and BENCHMARKS.md's ratios to SD1;
    a plain encoder folder has no measured time and prints none."""
    import json

    from typer.testing import CliRunner

    from refact_tui.cli.main import app
    from refact_tui.services.plan import CPU_SD1_EDIT_SECONDS, plan_model

    folder = pipeline_dir_for(arch)
    plan = plan_model(folder)
    assert plan.pipeline_class == json.loads((folder / "model_index.json").read_text())["_class_name"]
    assert plan.cpu_edit_seconds == pytest.approx(ratio * CPU_SD1_EDIT_SECONDS)
    r = CliRunner().invoke(app, ["plan", "--model", str(folder)])
    assert r.exit_code == 0, r.output
    assert f"time per edit on a 2-core CPU: about {ratio * CPU_SD1_EDIT_SECONDS:,.0f} s" in r.stdout
    assert plan_model(folder / "text_encoder").cpu_edit_seconds is None
