"""Image evaluation on the tiny pipeline with the tiny judge: streamed progress, final aggregation,
baseline vs edited, grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.base_weights import fc2_module
from engine.evaluation.config import GenerationConfig, ImageEvalConfig
from engine.evaluation.image_metrics import EvalTarget, evaluate_images, plan_items
from engine.request import EditRequest, Probe

REQ = EditRequest(
    prompt="a banana", source="a banana", target="a blue banana", oracle="a blue banana",
    positives=(Probe("a bowl of bananas", "a bowl of bananas", "a bowl of blue bananas"),),
    negatives=(Probe("an apple", "an apple", "a blue apple"), Probe("a sheep", "a sheep", "a black sheep")),
)
CONFIG = ImageEvalConfig(seeds=3, generation=GenerationConfig(steps=2, batch_size=4), grid_seeds=2, oracle=True)


class ListSink:
    def __init__(self):
        self.rows, self.artifacts = [], []

    def metric(self, edit_id, name, value, std, n, total, final):
        self.rows.append((edit_id, name, value, std, n, total, final))

    def artifact(self, edit_id, kind, path, sha256, nbytes, meta):
        self.artifacts.append((edit_id, kind, path, sha256, nbytes, meta))


def test_plan_counts():
    items = plan_items([EvalTarget(1, REQ)], CONFIG)
    by = {}
    for it in items:
        by[it.variant] = by.get(it.variant, 0) + 1
    assert by == {"edited": 3 * 4, "baseline": 3 * 4, "oracle": 3 * 2}  # oracle: edit prompt + positives
    assert all(it.prompt in ("a blue banana", "a bowl of blue bananas") for it in items if it.variant == "oracle")
    assert [it.uses_base_weights for it in items] == sorted(it.uses_base_weights for it in items)


def test_evaluate_images_streams_and_aggregates(tiny_model, judge, tmp_path):
    base = tiny_model.snapshot_fc2()
    with torch.no_grad():  # a crude "edit" so that edited and baseline images differ
        fc2_module(tiny_model, 1).weight.add_(0.5)
    sink = ListSink()
    progress = []
    res = evaluate_images(tiny_model, [EvalTarget(7, REQ)], CONFIG, judge=judge, base_fc2=base, sink=sink,
                          on_progress=progress.append, grid_dir=tmp_path)
    # progress: done counts increase to the total
    done = [p.done for p in progress]
    assert done == sorted(done) and done[-1] == progress[-1].total == 30
    # running rows (final=0) have growing n, then one final row per metric
    running = [r for r in sink.rows if r[1] == "efficacy" and not r[6]]
    assert [r[4] for r in running] == sorted(r[4] for r in running) and running[-1][5] == 3
    finals = {r[1]: r for r in sink.rows if r[6] and r[0] == 7}
    for name in ("efficacy", "generality", "specificity", "f1", "gmean", "baseline_efficacy", "oracle_efficacy"):
        assert name in finals, name
    # the final values are the success rates of the scored images
    edited = [r for r in res.results if r.item.variant == "edited"]
    eff = np.mean([r.p_b > r.p_a for r in edited if r.item.role == "edit"])
    spec = np.mean([r.p_a > r.p_b for r in edited if r.item.role == "negative"])
    assert finals["efficacy"][2] == pytest.approx(eff)
    assert finals["specificity"][2] == pytest.approx(spec)
    assert finals["specificity"][4] == 6
    g, s = finals["generality"][2], finals["specificity"][2]
    assert finals["f1"][2] == pytest.approx(0.0 if g + s == 0 else 2 * g * s / (g + s))
    # oracle specificity comes from the baseline images
    assert finals["oracle_specificity"][2] == pytest.approx(finals["baseline_specificity"][2])
    # edited and baseline images differ, baseline is the unedited model; weights are restored after
    base_probs = [(r.p_a, r.p_b) for r in res.results if r.item.variant == "baseline"]
    assert any(abs(a[1] - b[1]) > 1e-6 for a, b in zip(base_probs, [(r.p_a, r.p_b) for r in edited]))
    assert not torch.equal(fc2_module(tiny_model, 1).weight, base["encoder.layers.1.mlp.fc2.weight"])
    # one before/after grid: 2 rows x 2 seeds of 64x64 images plus the label column
    assert len(res.grids) == 1 and sink.artifacts[0][1] == "grid"
    with Image.open(res.grids[0]) as im:
        assert im.size == (96 + 2 * 64, 2 * 64)
