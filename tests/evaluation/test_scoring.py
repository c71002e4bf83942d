"""Metric math on synthetic probabilities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.evaluation.scoring import EditScores, f1, gmean, pair_probs, pair_probs_l2, retention, summarize


def _pairs(p_target):
    p = np.asarray(p_target, dtype=float)
    return np.stack([1 - p, p], axis=-1)


def test_summarize_exact_values():
    # 2 seeds; efficacy: seed0 win, seed1 loss
    eff = _pairs([[0.8], [0.3]])
    # 2 seeds x 4 positives
    gen = _pairs([[0.6, 0.8, 0.95, 0.4], [0.55, 0.2, 0.91, 0.76]])
    # 2 seeds x 2 negatives (success when P(source) > P(target))
    spec = _pairs([[0.1, 0.7], [0.2, 0.3]])
    m = summarize([EditScores(eff, gen, spec)])
    assert m["efficacy"].value == pytest.approx(0.5)
    assert m["efficacy"].std == pytest.approx(0.5)  # per-seed means 1, 0
    assert m["generality"].value == pytest.approx(6 / 8)  # 3/4 and 3/4
    assert m["generality"].std == pytest.approx(0.0)
    assert m["generality_75"].value == pytest.approx(4 / 8)  # 0.8, 0.95 | 0.91, 0.76
    assert m["generality_90"].value == pytest.approx(2 / 8)
    assert m["specificity"].value == pytest.approx(3 / 4)  # 1/2 and 2/2
    assert m["specificity"].std == pytest.approx(0.25)
    g, s = 0.75, 0.75
    assert m["f1"].value == pytest.approx(2 * g * s / (g + s))
    assert m["gmean"].value == pytest.approx(math.sqrt(g * s))
    assert m["generality"].n == 8 and m["specificity"].n == 4


def test_f1_is_harmonic_not_geometric():
    assert f1(1.0, 0.5) == pytest.approx(2 / 3)
    assert gmean(1.0, 0.5) == pytest.approx(math.sqrt(0.5))
    assert f1(0.0, 0.0) == 0.0


def test_rows_pool_cells_and_missing_probe_kinds_are_left_out():
    a = EditScores(_pairs([[0.9]]), _pairs([[0.9, 0.1]]))
    b = EditScores(_pairs([[0.1]]), _pairs([[0.9, 0.9]]))
    m = summarize([a, b])
    assert m["efficacy"].value == pytest.approx(0.5)
    assert m["generality"].value == pytest.approx(3 / 4)
    assert "specificity" not in m and "f1" not in m
    assert m["efficacy"].std is None  # one seed


def test_seed_count_mismatch_raises():
    with pytest.raises(ValueError):
        summarize([EditScores(_pairs([[0.9]])), EditScores(_pairs([[0.9], [0.1]]))])


def test_pair_probs_is_softmax_of_100_cos():
    torch.manual_seed(0)
    f, a, b = torch.randn(5, 8), torch.randn(5, 8), torch.randn(5, 8)
    p = pair_probs(f, a, b)
    cos = torch.nn.functional.cosine_similarity
    expect = torch.softmax(torch.stack([cos(f, a), cos(f, b)], -1) * 100, -1)
    assert torch.allclose(p, expect, atol=1e-6)
    assert torch.allclose(p.sum(-1), torch.ones(5))
    l2 = pair_probs_l2(f, a, b)
    d = torch.stack([(f - a).norm(dim=-1), (f - b).norm(dim=-1)], -1)
    assert torch.allclose(l2, torch.softmax(-d, -1), atol=1e-6)


def test_retention_mean_ignores_nan():
    assert retention([1.0, 0.0, 1.0, float("nan")]) == pytest.approx(2 / 3)
    assert math.isnan(retention([]))
