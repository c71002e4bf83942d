"""Pure metric math of the ReFACT evaluation protocol (no models, no I/O).

Every scored image (or text feature) yields a probability pair [P(A), P(B)] over its two texts,
A = the source text and B = the target text:

- efficacy: edit-prompt items, success when P(target) > P(source);
- generality: positive probes, success when P(target) > P(source); generality_75 / _90 count
  P(target) > 0.75 / 0.9 instead;
- specificity: negative probes, success when P(source) > P(target);
- f1 = 2GS/(G+S) (the paper's and EMCID's definition; efficacy is not part of it) and
  gmean = sqrt(G*S), the geometric mean that some write-ups call "F1".

Arrays are shaped [seeds, items, 2]. A metric's value is the mean over all (seed, item) cells of
all rows; its std is the population std over seeds of the per-seed mean (as the reference does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

from engine.evaluation.config import GENERALITY_THRESHOLDS

METRIC_NAMES = ("efficacy", "generality", "generality_75", "generality_90", "specificity", "f1", "gmean")


def pair_probs(feats: torch.Tensor, feats_a: torch.Tensor, feats_b: torch.Tensor, scale: float = 100.0) -> torch.Tensor:
    """softmax(scale * cos) over [A, B] per row; inputs [N, d] (need not be normalized)."""
    import torch  # deferred for `refact bench ls/show` (start-up rule: refact_tui/cli/__init__.py)

    f = torch.nn.functional.normalize(feats.float(), dim=-1)
    a = torch.nn.functional.normalize(feats_a.float(), dim=-1)
    b = torch.nn.functional.normalize(feats_b.float(), dim=-1)
    logits = torch.stack([(f * a).sum(-1), (f * b).sum(-1)], dim=-1) * scale
    return logits.softmax(-1)


def pair_probs_l2(feats: torch.Tensor, feats_a: torch.Tensor, feats_b: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """softmax(-||f - t|| / temperature) over [A, B] per row (the engine's default l2 similarity)."""
    import torch  # deferred for `refact bench ls/show` (start-up rule: refact_tui/cli/__init__.py)

    f = feats.float()
    logits = -torch.stack([(f - feats_a.float()).norm(dim=-1), (f - feats_b.float()).norm(dim=-1)], dim=-1)
    return (logits / temperature).softmax(-1)


@dataclass(frozen=True)
class MetricValue:
    """One aggregated metric: value, std over seeds, and the number of scored cells."""

    name: str
    value: float
    std: float | None
    n: int


@dataclass
class EditScores:
    """Probability pairs of one edit, each shaped [seeds, items, 2] (items may be 0)."""

    efficacy: np.ndarray
    generality: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 2)))
    specificity: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 2)))

    def __post_init__(self) -> None:
        self.efficacy = _as_cells(self.efficacy)
        self.generality = _as_cells(self.generality, self.efficacy.shape[0])
        self.specificity = _as_cells(self.specificity, self.efficacy.shape[0])


def _as_cells(p, seeds: int | None = None) -> np.ndarray:
    a = np.asarray(p, dtype=np.float64)
    if a.size == 0:
        return np.zeros((seeds or 0, 0, 2))
    if a.ndim == 1:
        a = a[None, None, :]
    elif a.ndim == 2:
        a = a[:, None, :]
    if a.ndim != 3 or a.shape[-1] != 2:
        raise ValueError(f"probabilities must be shaped [seeds, items, 2], got {a.shape}")
    return a


def target_wins(p: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """P(target) > P(source), or P(target) > threshold when one is given."""
    return p[..., 1] > threshold if threshold is not None else p[..., 1] > p[..., 0]


def source_wins(p: np.ndarray) -> np.ndarray:
    """P(source) > P(target)."""
    return p[..., 0] > p[..., 1]


def seed_stats(success: np.ndarray) -> tuple[float, float | None, np.ndarray]:
    """(mean over all cells, std over seeds of the per-seed mean, per-seed means) of [S, N] cells."""
    s = np.asarray(success, dtype=np.float64)
    if s.size == 0:
        return math.nan, None, np.zeros(0)
    per_seed = s.mean(axis=1)
    std = float(per_seed.std()) if len(per_seed) > 1 else None
    return float(s.mean()), std, per_seed


def f1(g: float, s: float) -> float:
    """2GS/(G+S); 0 when both are 0."""
    return 0.0 if g + s == 0 else 2.0 * g * s / (g + s)


def gmean(g: float, s: float) -> float:
    """sqrt(G*S)."""
    return math.sqrt(max(g, 0.0) * max(s, 0.0))


def _concat(arrays: Sequence[np.ndarray]) -> np.ndarray:
    arrays = [a for a in arrays if a.size]
    if not arrays:
        return np.zeros((0, 0, 2))
    seeds = {a.shape[0] for a in arrays}
    if len(seeds) != 1:
        raise ValueError(f"all rows must have the same number of seeds, got {sorted(seeds)}")
    return np.concatenate(arrays, axis=1)


def summarize(rows: Sequence[EditScores]) -> dict[str, MetricValue]:
    """Aggregate the metrics over one or more edits (rows); absent probe kinds are left out."""
    out: dict[str, MetricValue] = {}

    def put(name: str, success: np.ndarray) -> np.ndarray | None:
        if success.size == 0:
            return None
        value, std, per_seed = seed_stats(success)
        out[name] = MetricValue(name, value, std, int(success.size))
        return per_seed

    put("efficacy", target_wins(_concat([r.efficacy for r in rows])))
    gen = _concat([r.generality for r in rows])
    spec = _concat([r.specificity for r in rows])
    g_seed = put("generality", target_wins(gen))
    for t in GENERALITY_THRESHOLDS:
        put(f"generality_{round(t * 100)}", target_wins(gen, t))
    s_seed = put("specificity", source_wins(spec))
    if g_seed is not None and s_seed is not None:
        g, s = out["generality"].value, out["specificity"].value
        n = out["generality"].n + out["specificity"].n
        f1_seed = np.array([f1(a, b) for a, b in zip(g_seed, s_seed)])
        gm_seed = np.array([gmean(a, b) for a, b in zip(g_seed, s_seed)])
        multi = len(f1_seed) > 1
        out["f1"] = MetricValue("f1", f1(g, s), float(f1_seed.std()) if multi else None, n)
        out["gmean"] = MetricValue("gmean", gmean(g, s), float(gm_seed.std()) if multi else None, n)
    return out


def retention(values: Sequence[float]) -> float:
    """Mean of earlier edits' metric values re-measured at the current head (nan if none)."""
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan
