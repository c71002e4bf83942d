"""Bench scoring helpers: oracle requests, score (de)serialisation, failed probes and aggregation.

Scores are ``EditScores`` ([seeds, items, 2] pairs of [P(source), P(target)]); the metrics follow
engine.evaluation.scoring: the mean over (rows x seeds) cells, the std over seeds of the per-seed mean.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from engine.evaluation.scoring import EditScores, MetricValue, source_wins, summarize, target_wins
from engine.request import EditRequest, Probe

SPACES = ("text", "xattn", "image")
SPACE_TITLES = {"text": "text space", "xattn": "cross-attention proxy", "image": "image space (the truth)"}
VARIANTS = ("method", "baseline", "oracle")
REPORT_METRICS = ("efficacy", "generality", "specificity", "f1")


def oracle_request(request: EditRequest) -> EditRequest:
    """The request scored on the unedited model with the target texts as prompts (edit prompt: the
    oracle text or the target; positives: their targets); negatives stay (= baseline specificity)."""
    return EditRequest(
        prompt=request.oracle or request.target, source=request.source, target=request.target,
        positives=tuple(Probe(p.target, p.source, p.target) for p in request.positives),
        negatives=request.negatives,
    )


def with_specificity(scores: EditScores, spec_from: EditScores) -> EditScores:
    """``scores`` with the specificity cells of ``spec_from`` (oracle specificity = baseline's)."""
    return EditScores(efficacy=scores.efficacy, generality=scores.generality, specificity=spec_from.specificity)


def to_json(scores: EditScores) -> dict[str, list]:
    return {k: getattr(scores, k).tolist() for k in ("efficacy", "generality", "specificity")}


def from_json(data: dict[str, list]) -> EditScores:
    return EditScores(**{k: np.asarray(data[k], dtype=np.float64) for k in ("efficacy", "generality", "specificity")})


def row_metrics(scores: EditScores) -> dict[str, float]:
    """Metric name -> value of one row."""
    return {m.name: m.value for m in summarize([scores]).values() if not math.isnan(m.value)}


def failed_probes(request: EditRequest, scores: EditScores) -> list[str]:
    """Labels of the items that fail on most seeds (success rate < 0.5)."""
    out = []
    groups = (("edit", [request.prompt], scores.efficacy, target_wins),
              ("positive", [p.prompt for p in request.positives], scores.generality, target_wins),
              ("negative", [p.prompt for p in request.negatives], scores.specificity, source_wins))
    for kind, prompts, cells, rule in groups:
        if cells.size == 0:
            continue
        rate = rule(cells).mean(axis=0)
        for i, (prompt, r) in enumerate(zip(prompts, rate)):
            if r < 0.5:
                out.append(f"{kind} {i + 1}: {prompt}" if kind != "edit" else f"edit: {prompt}")
    return out


def aggregate(rows: Sequence[EditScores]) -> dict[str, dict[str, Any]]:
    """Metric name -> {value, std, n} over all rows."""
    if not rows:
        return {}
    out = {}
    for m in summarize(list(rows)).values():
        out[m.name] = {"value": None if math.isnan(m.value) else m.value, "std": m.std, "n": m.n}
    return out


def metric_value(agg: dict[str, Any], name: str) -> MetricValue | None:
    m = agg.get(name)
    return None if m is None or m.get("value") is None else MetricValue(name, m["value"], m.get("std"), m.get("n", 0))
