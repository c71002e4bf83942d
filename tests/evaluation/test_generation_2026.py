"""Image generation for the 2026 families through the one generic path (a table row per pipeline
class): every row fits its diffusers class, a 2-step 64x64 generation runs on each tiny build with
one CPU generator per image, an edited LLM encoder reaches the edit prompt's image, and base weights
reproduce the unedited image bit for bit."""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from engine.evaluation.config import GenerationConfig
from engine.evaluation.errors import EvaluationError
from engine.evaluation.generation import WorkItem, generate, initial_latents, pipeline_kind, prepare_pipeline
from engine.evaluation.pipeline_drives import DRIVES, Negatives, drive_of

sys.path.insert(0, str(Path(__file__).parents[1] / "engine"))
from family_helpers import cached_model  # noqa: E402

torch.set_num_threads(1)

NEW_FAMILIES = ("z-image", "flux2-klein", "lumina2", "qwen-image", "pixart-sigma", "chroma")
CFG = GenerationConfig(steps=2, height=64, width=64, output_type="pt", batch_size=2)
ITEMS = [WorkItem("a photo of a cat", 0), WorkItem("a red car on a street", 1)]


def _returned_parts(fn) -> int:
    """How many values ``fn``'s last return statement returns."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    last = [n for n in ast.walk(tree) if isinstance(n, ast.Return)][-1]
    return len(last.value.elts) if isinstance(last.value, ast.Tuple) else 1


@pytest.mark.parametrize("name", sorted(DRIVES))
def test_every_row_fits_its_pipeline_class(name):
    import diffusers

    cls, drive = getattr(diffusers, name), DRIVES[name]
    call = inspect.signature(cls.__call__).parameters
    passed = [n for n in drive.outputs if n is not None]
    if drive.negatives == Negatives.EMPTY:
        passed += [f"negative_{n}" for n in passed]
    passed += [drive.guidance, *drive.call_kwargs, "generator", "num_inference_steps", "height", "width",
               "output_type", "latents"]
    assert [n for n in passed if n not in call] == []
    assert _returned_parts(cls.encode_prompt) == len(drive.outputs)


@pytest.mark.parametrize("arch", NEW_FAMILIES)
def test_two_steps_at_64_are_seeded_per_image(arch, pipeline_dir_for):
    pipe = cached_model(pipeline_dir_for, arch).pipeline
    prepare_pipeline(pipe, "cpu")
    assert pipeline_kind(pipe) == arch
    assert initial_latents(pipe, [0], 64, 64) is None  # the pipeline draws its own noise, per generator
    pair = generate(pipe, ITEMS, CFG)
    alone = generate(pipe, ITEMS[1:], CFG)
    assert [tuple(x.shape) for x in pair] == [(3, 64, 64)] * 2 and all(torch.isfinite(x).all() for x in pair)
    # batch company changes nothing beyond GEMM rounding; the two prompts give different images
    assert (pair[1] - alone[0]).abs().max().item() < 1e-4
    assert (pair[0] - pair[1]).abs().max().item() > 0.05
    reseeded = generate(pipe, [WorkItem(ITEMS[1].prompt, 7)], CFG)[0]
    assert (reseeded - alone[0]).abs().max().item() > 0.05


def test_an_edited_llm_encoder_reaches_the_edit_prompt_image(pipeline_dir_for):
    from engine.base_weights import base_weights_of, slot_weights
    from engine.covariance import SecondMomentStore
    from engine.methods.refact.hparams import ReFACTHParams
    from engine.methods.refact.model_edit import apply_model_edit
    from engine.request import EditRequest

    model = cached_model(pipeline_dir_for, "z-image")
    pipe = model.pipeline
    prepare_pipeline(pipe, "cpu")
    request = EditRequest(prompt="the prince of wales", source="prince charles", target="a red dog")
    items = [WorkItem(request.prompt, 3), WorkItem("a bowl of soup", 3)]
    before = generate(pipe, items, CFG)
    base = base_weights_of(model)
    hp = ReFACTHParams(layer=2, lr=0.5, weight_decay=0.0, max_steps=30, templates=(),
                       slot_layers=(("text_encoder", 2),))
    try:
        apply_model_edit(model, request, hp, moments=SecondMomentStore(None), n_samples=64)
        after = generate(pipe, items, CFG)
        with slot_weights(model, base):
            unedited = generate(pipe, items, CFG)
    finally:
        model.restore_base()
    moved = (after[0] - before[0]).abs().mean().item()
    unrelated = (after[1] - before[1]).abs().mean().item()
    # measured 0.0122 vs 0.0054 mean |pixel change| (2 steps, seed 3)
    assert moved > 5e-3 and moved > 1.5 * unrelated
    assert all(torch.equal(a, b) for a, b in zip(unedited, before))
    assert all(torch.equal(a, b) for a, b in zip(generate(pipe, items, CFG), before))


def test_a_pipeline_without_a_row_is_refused_in_one_line():
    class MysteryPipeline:
        transformer = None

    with pytest.raises(EvaluationError) as err:
        drive_of(MysteryPipeline())
    assert "MysteryPipeline" in str(err.value) and "\n" not in str(err.value)
