"""Image space for the bench: per-request scores on the model as it is now, and caption CLIP scores.

Built on image_metrics: the same plan, batches, judge and success rules. The caller puts the model
in the state to score (an edit applied, or the unedited base): nothing here swaps weights. On the
unedited model the "edited" images are the baseline, and ``oracle=True`` adds the oracle images
(the target texts as prompts), whose specificity is scored on the baseline images as in the paper.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import numpy as np

from engine.evaluation.config import GenerationConfig, ImageEvalConfig
from engine.evaluation.generation import WorkItem, batched, generate_batch, prepare_pipeline
from engine.evaluation.image_metrics import EvalTarget, _scores_of, evaluate_images
from engine.evaluation.judge import Judge
from engine.evaluation.scoring import EditScores
from engine.events import ProgressCallback
from engine.request import EditRequest


def images_per_request(request: EditRequest, seeds: int, oracle: bool = False) -> int:
    """Images one request needs (edit prompt + probes per seed; the oracle adds edit + positives)."""
    n = seeds * (1 + len(request.positives) + len(request.negatives))
    return n + (seeds * (1 + len(request.positives)) if oracle else 0)


def _plain(config: ImageEvalConfig, oracle: bool) -> ImageEvalConfig:
    return replace(config, baseline=False, oracle=oracle, grids=False, quality=False)


def request_image_scores(model: Any, requests: Sequence[EditRequest], config: ImageEvalConfig, judge: Judge, *,
                         oracle: bool = False, on_progress: ProgressCallback | None = None,
                         ) -> tuple[list[EditScores], list[EditScores]]:
    """(scores of the model as it is, oracle scores or []) per request, each [seeds, items, 2]."""
    targets = [EvalTarget(None, r) for r in requests]
    res = evaluate_images(model, targets, _plain(config, oracle), judge=judge, on_progress=on_progress,
                          batch_runner=lambda batches, work: [work(b) for b in batches])
    n = len(config.seed_list)
    plain, orc = [], []
    for t, r in enumerate(requests):
        npos, nneg = len(r.positives), len(r.negatives)
        plain.append(_scores_of(res.results, t, "edited", n, npos, nneg))
        if oracle:
            orc.append(_scores_of(res.results, t, "oracle", n, npos, nneg, "edited"))
    return plain, orc


def caption_clip(model: Any, judge: Judge, captions: Sequence[str], seeds: Sequence[int],
                 generation: GenerationConfig, keep_images: bool = False) -> tuple[np.ndarray, list]:
    """100*cos(image, caption) of one image per caption (caption i with seed i), and the images if kept."""
    prepare_pipeline(model.pipeline, model.device, generation.fp16)
    gen = replace(generation, output_type="pil")
    items = [WorkItem(c, int(s)) for c, s in zip(captions, seeds)]
    scores: list[float] = []
    kept: list = []
    for chunk in batched(items, gen.batch_size):
        images = generate_batch(model.pipeline, chunk, gen)
        feats = judge.encode_images(images)
        scores += judge.clip_scores(feats, [it.prompt for it in chunk]).tolist()
        if keep_images:
            kept += images
    return np.asarray(scores, dtype=np.float64), kept
