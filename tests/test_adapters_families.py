"""Adapter exports of the multi-encoder tiny pipelines (SDXL, SD3, FLUX): the diffusers LoRA (CLIP
encoders) plus PEFT folders (T5 encoders, loaded with transformers ``load_adapter``) reproduce the merged
export's encode_prompt output to 1e-5; unloading the LoRA gives the CLIP encoders back bit for bit;
kohya files load the same way where diffusers reads kohya text-encoder keys (SDXL, FLUX)."""

from __future__ import annotations

import json
import runpy

import pytest
import torch
from test_adapters_export import PROMPTS, TOL, _encode, _load, _max_diff, _pipe
from worker_helpers import FAST, new_workspace, queue, sample_requests

pytestmark = pytest.mark.slow  # each module builds and edits tiny pipelines (20-60 s)

LAYERS = {  # tiny encoders: CLIP-L 4 layers (editable 0..1), CLIP-G / T5 editable 0..2
    "sdxl": (("text_encoder", 1), ("text_encoder_2", 2)),
    "sd3": (("text_encoder", 1), ("text_encoder_2", 2), ("text_encoder_3", 1)),
    "flux": (("text_encoder", 1), ("text_encoder_2", 1)),
}
CLIP_ONLY = {"sdxl": ("text_encoder_2",), "sd3": ("text_encoder", "text_encoder_2"), "flux": ("text_encoder",)}


@pytest.fixture(scope="module", params=["sdxl", "sd3", "flux"])
def family(request, tmp_path_factory, pipeline_dir_for):
    """Edit 1 on the CLIP encoders only, edit 2 on every slot; the merged export of the head."""
    from refact_tui.services.export import export_history
    from refact_tui.services.runner import run_worker

    arch = request.param
    root = tmp_path_factory.mktemp(f"adapters_{arch}")
    ws = new_workspace(root / "w", pipeline_dir_for(arch))
    hp = FAST.with_overrides(layer=1, max_steps=4, slot_layers=LAYERS[arch])
    first, second = sample_requests(2)
    queue(ws, [first], hp.with_overrides(slots=CLIP_ONLY[arch]))
    queue(ws, [second], hp)
    assert run_worker(ws, device="cpu").done == 2
    merged = export_history(ws, root / "merged", "merged").out
    yield arch, ws, root, merged
    ws.close()


def test_lora_export_matches_merged_and_unloads_exactly(family, pipeline_dir_for):
    from refact_tui.services.export import export_history

    arch, ws, root, merged_dir = family
    res = export_history(ws, root / "lora", "lora")
    data = json.loads((res.out / "refact_adapter.json").read_text())
    t5 = {m["component"] for m in data["matrices"] if m["format"] == "peft"}
    assert t5 == ({"text_encoder_3"} if arch == "sd3" else {"text_encoder_2"} if arch == "flux" else set())
    assert bool(res.notes) == bool(t5)
    merged, pipe = _pipe(merged_dir), _pipe(pipeline_dir_for(arch))
    base = {n: {k: v.clone() for k, v in getattr(pipe, n).state_dict().items()}
            for n in ("text_encoder", "text_encoder_2") if n not in t5}
    _load(pipe, res.out)
    assert all(_max_diff(_encode(pipe, p), _encode(merged, p)) < TOL for p in PROMPTS)
    pipe.unload_lora_weights()
    for n, state in base.items():
        after = getattr(pipe, n).state_dict()
        assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in after), n
    # the load_adapters.py the export wrote runs and loads every part (in bf16, as it says)
    loaded = runpy.run_path(str(res.out / "load_adapters.py"))["pipe"]
    assert {c: loaded.get_list_adapters().get(c) for c in ("text_encoder", "text_encoder_2")
            if c not in t5} == {c: ["refact"] for c in base}
    assert all(getattr(loaded, c).active_adapters() == ["refact"] for c in t5)


def test_kohya_export_of_the_clip_edits(family, pipeline_dir_for):
    """Kohya holds CLIP edits: the T5 edit is refused in one line, the CLIP-only fork exports, and
    diffusers loads it (SDXL, FLUX); SD3's diffusers loader has no kohya conversion, so there the file
    is checked by reading it back (import-adapter) instead."""
    from engine.errors import EngineError
    from refact_tui.services.export import export_history
    from refact_tui.services.history import fork
    from refact_tui.services.import_adapter import import_adapter
    from store.edits import applied_edits
    from store.histories import set_current_history

    arch, ws, root, _ = family
    head = ws.history()
    if arch != "sdxl":
        with pytest.raises(EngineError, match="--format kohya cannot hold edit 2"):
            export_history(ws, root / "kohya-refused", "kohya")
        assert not (root / "kohya-refused").exists()
    clip_only = fork(ws, 1, f"clip-only-{arch}")
    try:
        res = export_history(ws, root / "kohya", "kohya")
        keys = json.loads((res.out / "refact_adapter.json").read_text())["matrices"]
        assert {m["format"] for m in keys} == {"kohya"}
        want = export_history(ws, root / "merged-1", "merged").out
        if arch == "sd3":
            recorded = applied_edits(ws.db, ws.history().id)[-1].weights_hash
            assert import_adapter(ws, res.out).weights_hash == recorded
        else:
            pipe = _pipe(pipeline_dir_for(arch))
            _load(pipe, res.out)
            merged = _pipe(want)
            assert all(_max_diff(_encode(pipe, p), _encode(merged, p)) < TOL for p in PROMPTS)
    finally:
        set_current_history(ws.db, head.id)
    del clip_only


def test_peft_folders_load_into_the_t5_encoders_with_transformers(family):
    """--format peft: one folder per edited encoder; transformers load_adapter on each encoder of the
    base reproduces the merged export's encoders to 1e-5 (T5 included)."""
    import transformers

    from refact_tui.services.export import export_history

    arch, ws, root, merged_dir = family
    res = export_history(ws, root / "peft", "peft")
    folders = sorted(p.parent.name for p in res.out.glob("peft/*/adapter_config.json"))
    assert folders == sorted(n for n, _ in LAYERS[arch])
    from store.base_models import get_base_model

    base = get_base_model(ws.db, ws.history().base_model_id).path
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    index = json.loads((merged_dir / "model_index.json").read_text())
    for name in folders:
        cls = getattr(transformers, index[name][1])  # the pipeline's class: module paths differ per class
        enc = cls.from_pretrained(base, subfolder=name)
        want = cls.from_pretrained(str(merged_dir), subfolder=name)
        enc.load_adapter(str(res.out / "peft" / name), adapter_name="refact")
        with torch.no_grad():
            diff = (enc(input_ids=ids).last_hidden_state - want(input_ids=ids).last_hidden_state).abs().max().item()
        assert diff < TOL, (name, diff)
