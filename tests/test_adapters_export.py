"""Adapter exports (`refact export --format lora|kohya|peft`): diffusers / transformers load them onto the
base pipeline and get the merged export's encoder outputs to 1e-5; unloading gives the base back bit for
bit; per-edit adapters switch single edits off; `refact import-adapter` reads them back and refuses a
tampered adapter or another base without writing anything."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from worker_helpers import new_workspace, queue, sample_requests

pytestmark = pytest.mark.slow  # each module builds and edits tiny pipelines (20-60 s)

PROMPTS = ["A photo of a banana", "The Eiffel Tower at night"]
TOL = 1e-5


def _encode(pipe, prompt: str) -> list[torch.Tensor]:
    """Every text-conditioning tensor the pipeline's encode_prompt returns."""
    name = type(pipe).__name__
    with torch.no_grad():
        if name == "StableDiffusionPipeline":
            out = pipe.encode_prompt(prompt, "cpu", 1, False)
        elif name == "FluxPipeline":
            out = pipe.encode_prompt(prompt, prompt, device="cpu", max_sequence_length=16)
        elif name == "StableDiffusion3Pipeline":
            out = pipe.encode_prompt(prompt, prompt, prompt, device="cpu", do_classifier_free_guidance=False,
                                     max_sequence_length=16)
        else:
            out = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
    return [t for t in out if isinstance(t, torch.Tensor)]


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert len(a) == len(b) and a
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b))


def _pipe(path):
    from diffusers import DiffusionPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DiffusionPipeline.from_pretrained(str(path), local_files_only=True)


def _text_state(pipe) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v.clone() for n in ("text_encoder", "text_encoder_2", "text_encoder_3")
            if getattr(pipe, n, None) is not None for k, v in getattr(pipe, n).state_dict().items()}


def _load(pipe, out, per_edit_off: str | None = None) -> list[str]:
    """Load an adapter export the way its load_adapters.py does; the adapter names loaded."""
    data = json.loads((out / "refact_adapter.json").read_text())
    names, peft_parts = [], set()
    for m in data["matrices"]:
        if m["format"] in ("lora", "kohya") and (m["path"], m["adapter"]) not in names:
            names.append((m["path"], m["adapter"]))
        elif m["format"] == "peft":
            peft_parts.add((m["component"], m["adapter"], m["path"]))
    for file, adapter in names:
        pipe.load_lora_weights(str(out), weight_name=file, adapter_name=adapter)
    for component, adapter, folder in sorted(peft_parts):
        getattr(pipe, component).load_adapter(str(out / folder), adapter_name=adapter)
    loaded = list(dict.fromkeys([a for _, a in names] + [a for _, a, _ in peft_parts]))
    if per_edit_off is not None:
        pipe.set_adapters([a for a in loaded if a != per_edit_off])
    return loaded


@pytest.fixture(scope="module")
def sd1(tmp_path_factory, model_dir):
    """Two ReFACT edits and a TIME edit on the tiny SD1 pipeline, with its merged export."""
    from engine.request import EditRequest
    from refact_tui.services.export import export_history
    from refact_tui.services.methods import with_method
    from refact_tui.services.queue import add_edit
    from refact_tui.services.runner import run_worker

    root = tmp_path_factory.mktemp("adapters_sd1")
    ws = new_workspace(root / "w", model_dir)
    first, second = sample_requests(2)
    queue(ws, [first])
    add_edit(ws, with_method(EditRequest("A banana", "A banana", "A blue banana"), "time"))
    queue(ws, [second])
    assert run_worker(ws, device="cpu").done == 3
    merged = export_history(ws, root / "merged", "merged").out
    yield ws, root, merged
    ws.close()


@pytest.mark.parametrize("fmt", ["lora", "kohya"])
def test_sd1_adapter_matches_merged_and_unloads_to_the_base_bit_for_bit(sd1, model_dir, fmt):
    from refact_tui.services.export import export_history

    ws, root, merged_dir = sd1
    res = export_history(ws, root / f"out-{fmt}", fmt)
    assert res.kind == fmt and res.n_edits == 3
    readme = (res.out / "README.md").read_text()
    assert "load_lora_weights" in readme and ws.history().name in readme and "A banana" in readme
    merged, pipe = _pipe(merged_dir), _pipe(model_dir)
    base_text = _text_state(pipe)
    base_unet = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    want = {p: _encode(merged, p) for p in PROMPTS}
    assert _max_diff(_encode(pipe, PROMPTS[0]), want[PROMPTS[0]]) > 1e-3  # the edits change the output
    _load(pipe, res.out)
    assert all(_max_diff(_encode(pipe, p), want[p]) < TOL for p in PROMPTS)
    # the TIME edit: every edited UNet matrix's output equals the merged UNet's
    data = json.loads((res.out / "refact_adapter.json").read_text())
    unet_modules = [m["module"] for m in data["matrices"] if m["component"] == "unet"]
    assert unet_modules and all(m.endswith(("attn2.to_v", "attn2.to_k")) for m in unet_modules)
    for name in unet_modules:
        x = torch.randn(3, merged.unet.get_submodule(name).in_features, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            diff = (pipe.unet.get_submodule(name)(x) - merged.unet.get_submodule(name)(x)).abs().max().item()
        assert diff < TOL, name
    pipe.unload_lora_weights()
    after = _text_state(pipe)
    assert after.keys() == base_text.keys() and all(torch.equal(after[k], base_text[k]) for k in after)
    unet = pipe.unet.state_dict()
    assert unet.keys() == base_unet.keys() and all(torch.equal(unet[k], base_unet[k]) for k in unet)


def test_sd1_per_edit_adapter_switched_off_equals_the_history_without_that_edit(sd1, model_dir):
    from refact_tui.services.export import export_history
    from refact_tui.services.working_model import load_deltas
    from store.edits import applied_edits

    ws, root, _ = sd1
    res = export_history(ws, root / "per-edit", "lora", per_edit=True)
    files = sorted(p.name for p in res.out.glob("edit-*.safetensors"))
    assert files == ["edit-1.safetensors", "edit-2.safetensors", "edit-3.safetensors"]
    edits = applied_edits(ws.db, ws.history().id)
    deltas = load_deltas(ws, edits)
    without_first = _pipe(model_dir)  # merged without edit 1: base + deltas 2, 3
    for d in deltas[1:]:
        d.apply(without_first.unet if d.components == ["unet"] else without_first.text_encoder)
    pipe = _pipe(model_dir)
    assert _load(pipe, res.out, per_edit_off="edit-1") == ["edit-1", "edit-2", "edit-3"]
    assert all(_max_diff(_encode(pipe, p), _encode(without_first, p)) < TOL for p in PROMPTS)


def test_import_adapter_reads_the_exact_deltas_back_and_refuses_tampering_or_another_base(
        sd1, tmp_path, tmp_path_factory):
    from fixtures_models import tiny_pipeline_dir
    from typer.testing import CliRunner

    from engine.errors import DeltaIntegrityError
    from refact_tui.cli.main import app
    from refact_tui.services.export import export_history
    from refact_tui.services.import_adapter import import_adapter
    from refact_tui.services.working_model import load_deltas
    from store.edits import applied_edits
    from store.histories import list_histories

    ws, root, _ = sd1
    src = ws.history()
    res = export_history(ws, tmp_path / "k", "kohya")
    other = new_workspace(tmp_path / "other", tiny_pipeline_dir(tmp_path_factory, seed=1))
    with other:
        with pytest.raises(DeltaIntegrityError, match="made for base"):
            import_adapter(other, res.out)
        r = CliRunner().invoke(app, ["-w", str(other.root), "import-adapter", str(res.out)])
        assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 and "made for base" in r.output
        assert [h.name for h in list_histories(other.db)] == ["main"]
        assert not any(other.deltas_dir.iterdir())
    try:
        imported = import_adapter(ws, res.out)
        assert imported.n_edits == 3 and imported.weights_hash == applied_edits(ws.db, src.id)[-1].weights_hash
        new = ws.history()
        assert new.name == imported.history and new.head_seq == 3
        back = load_deltas(ws, applied_edits(ws.db, new.id))
        orig = load_deltas(ws, applied_edits(ws.db, src.id))
        for a, b in zip(back, orig):
            assert [(u.component, u.module) for u in a.updates] == [(u.component, u.module) for u in b.updates]
            assert all(torch.equal(x.left, y.left) and torch.equal(x.right, y.right)
                       for x, y in zip(a.updates, b.updates))
    finally:
        from store.histories import set_current_history

        set_current_history(ws.db, src.id)
    n_hist = len(list_histories(ws.db))
    f = res.out / "refact_kohya.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(DeltaIntegrityError, match="sha256"):
        import_adapter(ws, res.out)
    assert len(list_histories(ws.db)) == n_hist and ws.history().id == src.id


def test_bad_export_input_is_one_line_and_writes_nothing(sd1, tmp_path):
    from typer.testing import CliRunner

    from refact_tui.cli.main import app

    ws, root, _ = sd1
    runner = CliRunner()
    for args, text in [
        (["export", str(tmp_path / "a"), "--format", "onnx"], "unknown --format"),
        (["export", str(tmp_path / "b"), "--format", "peft"], "--format peft holds text-encoder edits only"),
        (["export", str(tmp_path / "c"), "--format", "merged", "--per-edit"], "--per-edit applies"),
        (["export", str(root / "merged"), "--format", "lora"], "already exists"),
    ]:
        r = runner.invoke(app, ["-w", str(ws.root), *args])
        assert r.exit_code != 0, args
        lines = [l for l in (r.stderr or r.output).splitlines() if l.strip()]
        assert len(lines) == 1 and text in lines[0], (args, r.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
