"""Image evaluation, grids and the CLIP-score check on a tiny SD3 pipeline (three encoders, a
transformer, no .unet): base-weight images use the base of every slot, edited images the edits."""

from __future__ import annotations

import torch
from PIL import Image

from engine.base_weights import base_weights_of
from engine.evaluation.config import GenerationConfig, ImageEvalConfig
from engine.evaluation.image_metrics import EvalTarget, evaluate_images
from engine.request import EditRequest, Probe

REQ = EditRequest(prompt="a banana", source="a banana", target="a blue banana",
                  negatives=(Probe("an apple", "an apple", "a blue apple"),))
CONFIG = ImageEvalConfig(seeds=2, generation=GenerationConfig(steps=2, height=64, width=64, batch_size=4),
                         grid_seeds=2, quality=True, quality_captions=2)
CAPTIONS = ["a dog on a beach", "a red house in the snow"]


def _probs(res, variant: str) -> list[tuple]:
    return sorted((r.item.role, r.item.index, r.item.seed, r.p_a, r.clip) for r in res.results if r.item.variant == variant)


def test_sd3_image_eval_swaps_every_slot_and_scores_quality(pipeline_dir_for, judge, tmp_path):
    from engine.models import load_model

    model = load_model(pipeline_dir_for("sd3"), device="cpu")
    base = base_weights_of(model)
    assert list(base) == ["text_encoder", "text_encoder_2", "text_encoder_3"]
    before = evaluate_images(model, [EvalTarget(None, REQ)], CONFIG, judge=judge, base_slots=base,
                             captions=CAPTIONS)
    # unedited: edited and baseline images are the same images, quality before == after
    assert [p[3] for p in _probs(before, "edited")] == [p[3] for p in _probs(before, "baseline")]
    assert before.quality.clip_score_before == before.quality.clip_score_after and before.quality.n == 2
    with torch.no_grad():
        for slot in model.slots:
            list(slot.fc2_modules().values())[1].weight.mul_(3.0)
    edited_w = [s.snapshot_fc2() for s in model.slots]
    after = evaluate_images(model, [EvalTarget(None, REQ)], CONFIG, judge=judge, base_slots=base,
                            grid_dir=tmp_path, captions=CAPTIONS)
    # base-weight images are bit-for-bit the unedited ones; the edited ones changed
    assert _probs(after, "baseline") == _probs(before, "baseline")
    assert after.quality.clip_score_before == before.quality.clip_score_before
    assert _probs(after, "edited") != _probs(before, "edited")
    assert after.quality.clip_score_after != after.quality.clip_score_before
    # the edits are back in place after the base-weight batches
    assert all(torch.equal(w, snap[k]) for s, snap in zip(model.slots, edited_w) for k, w in s.snapshot_fc2().items())
    assert set(after.per_edit[0]) >= {"efficacy", "specificity"}
    (grid,) = after.grids
    assert Image.open(grid).size == (96 + 2 * 64, 2 * 64)
