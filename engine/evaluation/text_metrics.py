"""Text-space metrics (seconds, no images).

The edited encoder's pooled feature of each prompt (edit prompt, positive and negative probe
prompts) is compared with the frozen base encoder's pooled features of that prompt's source and
target texts. The comparison is the one the edit optimized: by default the edit's hparams
similarity, i.e. softmax over negative L2 distances (``l2``, the paper's setting) or softmax of
100*cos (``cosine``), each divided by the temperature. Success rules are those of scoring.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch

from engine.base_weights import fc2_weights
from engine.evaluation.scoring import EditScores, MetricValue, pair_probs, pair_probs_l2, summarize
from engine.request import EditRequest

EncodeFn = Callable[[Sequence[str]], torch.Tensor]


def encode_texts(model, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """Pooled features [N, d] (float32, cpu) of ``texts`` under the model's current weights."""
    texts = list(texts)
    chunks = [model.adapter.encode(model.tokenizer, texts[i : i + batch_size]).float().cpu()
              for i in range(0, len(texts), batch_size)]
    return torch.cat(chunks) if chunks else torch.zeros(0)


class FeatureCache:
    """Pooled features by text, computed once by ``encode`` (e.g. the frozen base encoder)."""

    def __init__(self, encode: EncodeFn):
        self._encode = encode
        self._cache: dict[str, torch.Tensor] = {}

    @classmethod
    def frozen(cls, model, base_fc2: dict[int, torch.Tensor] | None) -> "FeatureCache":
        """Features of ``model`` with its fc2 weights swapped to ``base_fc2`` while encoding
        (None or {} = the model is already the base)."""

        def encode(texts: Sequence[str]) -> torch.Tensor:
            with fc2_weights(model, base_fc2):
                return encode_texts(model, texts)

        return cls(encode)

    def get(self, texts: Sequence[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            for t, f in zip(missing, self._encode(missing)):
                self._cache[t] = f
        return torch.stack([self._cache[t] for t in texts])

    def __len__(self) -> int:
        return len(self._cache)


@dataclass(frozen=True)
class TextMetrics:
    """Text-space metrics of one edit (probe metrics are None when the request has no probes)."""

    efficacy: float
    p_target: float
    generality: float | None = None
    generality_75: float | None = None
    generality_90: float | None = None
    specificity: float | None = None
    f1: float | None = None
    gmean: float | None = None
    n_positives: int = 0
    n_negatives: int = 0

    def values(self) -> dict[str, float]:
        """Metric name -> value for the metrics that exist."""
        keep = ("efficacy", "p_target", "generality", "generality_75", "generality_90", "specificity", "f1", "gmean")
        return {k: v for k, v in asdict(self).items() if k in keep and v is not None}


def text_scores(edited, frozen_features: FeatureCache, request: EditRequest, *,
                similarity: str = "l2", temperature: float = 1.0) -> EditScores:
    """Probability pairs [P(source), P(target)] of the edit prompt and every probe (one 'seed')."""
    prompts = [request.prompt] + [p.prompt for p in request.positives] + [p.prompt for p in request.negatives]
    sources = [request.source] + [p.source for p in request.positives] + [p.source for p in request.negatives]
    targets = [request.target] + [p.target for p in request.positives] + [p.target for p in request.negatives]
    feats = encode_texts(edited, prompts)
    fa, fb = frozen_features.get(sources), frozen_features.get(targets)
    if similarity == "cosine":
        probs = pair_probs(feats, fa, fb, scale=100.0 / temperature)
    else:
        probs = pair_probs_l2(feats, fa, fb, temperature=temperature)
    p = probs.numpy()[None]  # [1 seed, items, 2]
    npos = len(request.positives)
    return EditScores(efficacy=p[:, :1], generality=p[:, 1 : 1 + npos], specificity=p[:, 1 + npos :])


def text_metrics(edited, frozen_features: FeatureCache, request: EditRequest, *,
                 similarity: str = "l2", temperature: float = 1.0) -> TextMetrics:
    """Efficacy / generality (+@0.75/@0.9) / specificity / f1 / gmean of one edit in text space."""
    scores = text_scores(edited, frozen_features, request, similarity=similarity, temperature=temperature)
    return metrics_of_scores(scores, request)


def metrics_of_scores(scores: EditScores, request: EditRequest) -> TextMetrics:
    """``text_metrics`` from the probability pairs ``text_scores`` already computed for ``request``."""
    m: dict[str, MetricValue] = summarize([scores])
    get = lambda k: m[k].value if k in m else None  # noqa: E731
    return TextMetrics(
        efficacy=m["efficacy"].value,
        p_target=float(scores.efficacy[0, 0, 1]),
        generality=get("generality"),
        generality_75=get("generality_75"),
        generality_90=get("generality_90"),
        specificity=get("specificity"),
        f1=get("f1"),
        gmean=get("gmean"),
        n_positives=len(request.positives),
        n_negatives=len(request.negatives),
    )
