"""Image-space evaluation of one edit or of every applied edit of a history, at the current head.

Plan: for every target edit, every seed and every prompt (edit prompt, positive probes, negative
probes) one image is generated with the current (edited) weights; optionally the same prompts with
the base weights (``baseline``) and the unedited model prompted with the target texts
(``oracle``: the request's oracle or target for the edit prompt, each positive probe's target;
oracle specificity is scored on the baseline images, as in the paper). Each image is judged with
softmax(100*cos) over its [source, target] texts (scoring.py). Batches are formed before they are
sharded across processes (distributed.py), so results do not depend on the world size.

Metrics stream to a ``MetricSink`` while they accumulate (final=False, running success rate of
what this process scored so far) and once complete (final=True, full aggregation with std over
seeds). Before/after grids of the edit prompt (same seeds) are saved when a grid_dir is given.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from engine.base_weights import fc2_weights, slot_weights
from engine.evaluation.config import ImageEvalConfig
from engine.evaluation.distributed import run_sharded
from engine.evaluation.generation import WorkItem, batched, generate_batch, prepare_pipeline
from engine.evaluation.grids import before_after_grid
from engine.evaluation.judge import Judge
from engine.evaluation.quality import QualityResult, fid_status, inception_fid
from engine.evaluation.scoring import EditScores, MetricValue, summarize
from engine.events import Progress, ProgressCallback
from engine.request import EditRequest

BASE_VARIANTS = ("baseline", "oracle", "quality_before")


class MetricSink(Protocol):
    """Where metrics and artifacts go while an evaluation runs (the service writes them to SQLite)."""

    def metric(self, edit_id: int | None, name: str, value: float, std: float | None, n: int, total: int, final: bool) -> None: ...

    def artifact(self, edit_id: int | None, kind: str, path: Path, sha256: str, nbytes: int, meta: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class EvalTarget:
    """An edit to evaluate: its store id (None outside a workspace) and its request."""

    edit_id: int | None
    request: EditRequest
    label: str = ""


@dataclass(frozen=True)
class ImageItem:
    """One image: which target/variant/probe it belongs to, its prompt, seed and judged texts."""

    target: int
    variant: str      # edited | baseline | oracle | quality_before | quality_after
    role: str         # edit | positive | negative | caption
    index: int
    seed_index: int
    seed: int
    prompt: str
    text_a: str       # source text (or the caption for quality items)
    text_b: str       # target text
    keep_image: bool = False

    @property
    def uses_base_weights(self) -> bool:
        return self.variant in BASE_VARIANTS


@dataclass(frozen=True)
class ItemResult:
    item: ImageItem
    p_a: float
    p_b: float
    clip: float
    image: Any = None


@dataclass
class ImageEvalResult:
    per_edit: dict[int, dict[str, MetricValue]] = field(default_factory=dict)      # target index -> metrics
    baseline: dict[int, dict[str, MetricValue]] = field(default_factory=dict)
    oracle: dict[int, dict[str, MetricValue]] = field(default_factory=dict)
    overall: dict[str, MetricValue] = field(default_factory=dict)
    grids: list[Path] = field(default_factory=list)
    quality: QualityResult | None = None
    results: list[ItemResult] = field(default_factory=list)


def plan_items(targets: Sequence[EvalTarget], config: ImageEvalConfig, captions: Sequence[str] = ()) -> list[ImageItem]:
    """Every image the evaluation needs, in a fixed order (edited first, then base-weight images)."""
    seeds = config.seed_list
    grid_n = config.grid_seeds if config.grids else 0
    items: list[ImageItem] = []

    def probes(req: EditRequest, oracle: bool) -> list[tuple[str, int, str, str, str]]:
        out = [("edit", 0, (req.oracle or req.target) if oracle else req.prompt, req.source, req.target)]
        out += [("positive", i, p.target if oracle else p.prompt, p.source, p.target) for i, p in enumerate(req.positives)]
        if not oracle:
            out += [("negative", i, p.prompt, p.source, p.target) for i, p in enumerate(req.negatives)]
        return out

    variants = ["edited", "baseline"] + (["oracle"] if config.oracle else [])
    for variant in variants:
        for t, target in enumerate(targets):
            for si, seed in enumerate(seeds):
                for role, idx, prompt, a, b in probes(target.request, variant == "oracle"):
                    keep = role == "edit" and si < grid_n and variant in ("edited", "baseline")
                    if variant == "baseline" and not config.baseline and not keep:
                        continue
                    items.append(ImageItem(t, variant, role, idx, si, seed, prompt, a, b, keep))
    if config.quality:
        keep_q = fid_status()[0]
        for variant in ("quality_after", "quality_before"):
            for i, cap in enumerate(captions):
                items.append(ImageItem(-1, variant, "caption", i, 0, config.seed_offset + i, cap, cap, cap, keep_q))
    # Edited-weight images first, then base-weight ones, so a batch never mixes weight states.
    return [it for it in items if not it.uses_base_weights] + [it for it in items if it.uses_base_weights]


def make_batches(items: Sequence[ImageItem], batch_size: int) -> list[list[ImageItem]]:
    """Fixed batches that never mix edited and base weights."""
    edited = [it for it in items if not it.uses_base_weights]
    base = [it for it in items if it.uses_base_weights]
    return batched(edited, batch_size) + batched(base, batch_size)


def _base_state(model, batch: Sequence[ImageItem], base_fc2: dict | None, base_slots: dict[str, dict] | None):
    """The weights a batch renders with: base weights of every slot for base-weight variants."""
    if not batch[0].uses_base_weights:
        return fc2_weights(model, None)
    if base_slots is not None:
        return slot_weights(model, base_slots)
    return fc2_weights(model, base_fc2)


def _score_batch(model, judge: Judge, batch: Sequence[ImageItem], config: ImageEvalConfig,
                 base_fc2: dict | None, base_slots: dict[str, dict] | None = None) -> list[ItemResult]:
    gen = replace(config.generation, output_type="pil")
    work = [WorkItem(it.prompt, it.seed) for it in batch]
    with _base_state(model, batch, base_fc2, base_slots):
        images = generate_batch(model.pipeline, work, gen)
    feats = judge.encode_images(images)
    probs = judge.pair_probs(feats, [it.text_a for it in batch], [it.text_b for it in batch])
    clip = judge.clip_scores(feats, [it.text_a for it in batch])
    return [
        ItemResult(it, float(p[0]), float(p[1]), float(c), images[k] if it.keep_image else None)
        for k, (it, p, c) in enumerate(zip(batch, probs.tolist(), clip.tolist()))
    ]


def _scores_of(results: Sequence[ItemResult], target: int, variant: str, n_seeds: int,
               n_pos: int, n_neg: int, spec_variant: str | None = None) -> EditScores:
    def cells(role: str, n: int, var: str) -> np.ndarray:
        arr = np.full((n_seeds, n, 2), np.nan)
        for r in results:
            it = r.item
            if it.target == target and it.variant == var and it.role == role:
                arr[it.seed_index, it.index] = (r.p_a, r.p_b)
        if n and np.isnan(arr).any():
            return np.zeros((n_seeds, 0, 2))
        return arr

    return EditScores(
        efficacy=cells("edit", 1, variant),
        generality=cells("positive", n_pos, variant),
        specificity=cells("negative", n_neg, spec_variant or variant) if spec_variant != "" else np.zeros((n_seeds, 0, 2)),
    )


def _running(results: Sequence[ItemResult]) -> dict[str, tuple[float, int]]:
    """Success rate so far per metric over the scored cells of one target's edited images."""
    wins: dict[str, list[bool]] = defaultdict(list)
    for r in results:
        if r.item.role == "edit":
            wins["efficacy"].append(r.p_b > r.p_a)
        elif r.item.role == "positive":
            wins["generality"].append(r.p_b > r.p_a)
        elif r.item.role == "negative":
            wins["specificity"].append(r.p_a > r.p_b)
    return {k: (float(np.mean(v)), len(v)) for k, v in wins.items()}


def evaluate_images(model, targets: Sequence[EvalTarget], config: ImageEvalConfig, *, judge: Judge,
                    base_fc2: dict | None = None, sink: MetricSink | None = None,
                    on_progress: ProgressCallback | None = None, grid_dir: Path | None = None,
                    captions: Sequence[str] = (),
                    batch_runner: Callable[[Sequence, Callable], list] = run_sharded,
                    base_slots: dict[str, dict] | None = None) -> ImageEvalResult:
    """Generate, judge and aggregate; ``base_fc2`` (layer -> base W, first encoder) or ``base_slots``
    (slot name -> its base weights, every encoder of an SDXL/SD3/FLUX pipeline; wins when given)
    gives the unedited model (None = the model is unedited). Returns the same result on every process."""
    prepare_pipeline(model.pipeline, model.device, config.generation.fp16)
    items = plan_items(targets, config, captions)
    batches = make_batches(items, config.generation.batch_size)
    n_seeds = len(config.seed_list)
    totals = {t: {"efficacy": n_seeds, "generality": n_seeds * len(tg.request.positives),
                  "specificity": n_seeds * len(tg.request.negatives)} for t, tg in enumerate(targets)}
    local: list[ItemResult] = []
    done = [0]

    def work(batch: list[ImageItem]) -> list[ItemResult]:
        out = _score_batch(model, judge, batch, config, base_fc2, base_slots)
        local.extend(out)
        done[0] += len(batch)
        if on_progress is not None:
            on_progress(Progress("image-eval", done[0], len(items), f"{batch[0].variant} images"))
        if sink is not None:
            for t in sorted({it.target for it in batch if it.variant == "edited"}):
                mine = [r for r in local if r.item.target == t and r.item.variant == "edited"]
                for name, (value, n) in _running(mine).items():
                    sink.metric(targets[t].edit_id, name, value, None, n, totals[t][name], False)
        return out

    results = [r for chunk in batch_runner(batches, work) for r in chunk]
    res = ImageEvalResult(results=results)
    for t, tg in enumerate(targets):
        npos, nneg = len(tg.request.positives), len(tg.request.negatives)
        res.per_edit[t] = summarize([_scores_of(results, t, "edited", n_seeds, npos, nneg)])
        if config.baseline:
            res.baseline[t] = summarize([_scores_of(results, t, "baseline", n_seeds, npos, nneg)])
        if config.oracle:
            spec = "baseline" if config.baseline else ""
            res.oracle[t] = summarize([_scores_of(results, t, "oracle", n_seeds, npos, 0 if not spec else nneg, spec)])
    if len(targets) > 1:
        res.overall = summarize([
            _scores_of(results, t, "edited", n_seeds, len(tg.request.positives), len(tg.request.negatives))
            for t, tg in enumerate(targets)
        ])
    if config.quality and captions:
        res.quality = _quality(results, model)
    if grid_dir is not None and config.grids and config.grid_seeds:
        res.grids = _grids(results, targets, grid_dir, sink)
    if sink is not None:
        _emit_final(sink, targets, res)
    return res


def _quality(results: Sequence[ItemResult], model) -> QualityResult:
    before = [r for r in results if r.item.variant == "quality_before"]
    after = [r for r in results if r.item.variant == "quality_after"]
    ok, note = fid_status()
    fid = None
    if ok:
        fid = inception_fid([r.image for r in before], [r.image for r in after], model.device)
        note = f"FID between {len(before)} unedited and edited caption images"
    return QualityResult(float(np.mean([r.clip for r in before])), float(np.mean([r.clip for r in after])),
                         len(after), fid, note)


def _grids(results: Sequence[ItemResult], targets: Sequence[EvalTarget], grid_dir: Path, sink: MetricSink | None) -> list[Path]:
    paths = []
    for t, tg in enumerate(targets):
        def pick(var: str) -> list[ItemResult]:
            return [r for r in sorted(results, key=lambda r: r.item.seed_index)
                    if r.item.target == t and r.item.variant == var and r.image is not None]

        before, after = pick("baseline"), pick("edited")
        if not before or not after:
            continue
        name = f"edit-{tg.edit_id}" if tg.edit_id is not None else f"target-{t}"
        path = grid_dir / f"{name}-before-after.png"
        sha, nbytes = before_after_grid([r.image for r in before], [r.image for r in after], path)
        paths.append(path)
        if sink is not None:
            sink.artifact(tg.edit_id, "grid", path, sha, nbytes,
                          {"prompt": tg.request.prompt, "seeds": [r.item.seed for r in after], "rows": ["unedited", "edited"]})
    return paths


def _emit_final(sink: MetricSink, targets: Sequence[EvalTarget], res: ImageEvalResult) -> None:
    def emit(edit_id, metrics: dict[str, MetricValue], prefix: str = "") -> None:
        for m in metrics.values():
            sink.metric(edit_id, prefix + m.name, m.value, m.std, m.n, m.n, True)

    for t, tg in enumerate(targets):
        emit(tg.edit_id, res.per_edit[t])
        if t in res.baseline:
            emit(tg.edit_id, res.baseline[t], "baseline_")
        if t in res.oracle:
            emit(tg.edit_id, res.oracle[t], "oracle_")
    if res.overall:
        emit(None, res.overall)
    if res.quality is not None:
        head = targets[-1].edit_id if targets else None
        q = res.quality
        sink.metric(head, "clip_score_before", q.clip_score_before, None, q.n, q.n, True)
        sink.metric(head, "clip_score", q.clip_score_after, None, q.n, q.n, True)
        if q.fid is not None:
            sink.metric(head, "fid", q.fid, None, q.n, q.n, True)
