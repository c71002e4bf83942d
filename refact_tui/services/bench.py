"""`refact bench`: every row of a request file edited independently on the unedited base, scored per
row in text space, in the cross-attention proxy and (unless text-only) in image space, then reverted.

Baseline (unedited) and oracle scores are computed once per (model, corpus, settings) key and shared
by every run with that key, whatever its method. A run is stored with everything needed to rerun it
(`bench_config.py`), in one transaction once every row is done: a failed or interrupted bench stores
no run. Before every row the hash of the matrices the method edits must equal the base's.

Under ``accelerate launch`` (engine.distributed) every process loads the model on its own device; the
vectorised v* is sharded by chunks, the rows by contiguous blocks (each row is edited, scored and
reverted whole by one process), and the results are gathered in row order, so the stored run equals
a one-process run. References are read and written by the main process only; so is the run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from engine.distributed import (
    from_main,
    is_distributed,
    is_main_process,
    process_device,
    process_info,
    require_work_for_all,
    run_sharded,
)
from engine.errors import DeltaIntegrityError, EngineError
from engine.evaluation.scoring import EditScores
from engine.events import Progress, ProgressCallback
from engine.files import file_sha256
from engine.request import EditRequest
from refact_tui.services.bench_config import BenchOptions, digest, library_versions
from refact_tui.services.bench_scores import (
    aggregate,
    failed_probes,
    from_json,
    oracle_request,
    row_metrics,
    to_json,
    with_specificity,
)

RowHook = Callable[[Any, int], None]   # (model, row index) before each row's edit, for tests


class BenchError(EngineError):
    """Bad bench input (one line; nothing was stored)."""


@dataclass
class BenchRow:
    index: int
    request: EditRequest
    scores: dict[str, EditScores]
    seconds: float
    weights_hash: str
    error: str | None = None
    edited: list[dict[str, Any]] = field(default_factory=list)   # {"slot", "layer", "module"} per edited part

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        return {space: row_metrics(s) for space, s in self.scores.items()}

    @property
    def failed(self) -> dict[str, list[str]]:
        out = {space: failed_probes(self.request, s) for space, s in self.scores.items()}
        if self.error:
            out["edit"] = [self.error]
        return out


@dataclass
class BenchReport:
    run_id: int
    method: str
    rows: list[BenchRow]
    aggregates: dict[str, dict[str, dict[str, Any]]]  # space -> variant -> metric -> {value, std, n}
    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    quality: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


# ----------------------------------------------------------------------------------- inputs


def read_rows(path: str | Path, tokenizer: Any, max_tokens: int, fmt: str = "auto",
              limit: int | None = None, negatives: str | Path | None = None) -> list[EditRequest]:
    """The file's requests (any queue-importable format), length-checked; BenchError on any problem."""
    from engine.admission import RequestChecker
    from engine.importers import ImportProblem, load_requests

    if limit is not None and limit < 1:
        raise BenchError(f"--limit must be >= 1, got {limit}")
    # With --limit, every row's structure is checked but only the rows that will run are tokenised
    # (a 10,000-row file no longer spends minutes in the tokenizer before a 3-row bench).
    result = load_requests(path, format=fmt, tokenizer=None if limit else tokenizer, max_tokens=max_tokens,
                           negatives=negatives)
    rows = result.requests[:limit] if limit else result.requests
    errors = list(result.errors)
    if limit and not errors:
        checker = RequestChecker.single(tokenizer, max_tokens)
        errors = [ImportProblem(str(path), r.row, p.field, p.message) for r in rows
                  for p in replace(checker, templates=tuple(r.hparams.get("templates", checker.templates)))
                  .problems(r.request)]
    if errors:
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise BenchError(f"{errors[0]}{more}; fix the file, nothing was benchmarked")
    if not rows:
        raise BenchError(f"{path} has no requests to benchmark; add at least one row")
    return [r.request for r in rows]


def _load(ws, options: BenchOptions):
    from engine.models import detect_kind, load_model, resolve_source
    from store.base_models import get_base_model

    source = options.model
    if source is None:
        source = get_base_model(ws.db, ws.history().base_model_id).path
    with_pipe = detect_kind(resolve_source(source)) == "sd-pipeline"
    device = str(process_device(options.device)) if is_distributed() else options.device
    from refact_tui.services.working_model import load_dtype

    return load_model(source, device=device, with_pipeline=with_pipe, dtype=load_dtype(ws))  # `bench --dtype`


def _judge_provenance(spec: str | None) -> dict[str, Any]:
    import os

    from engine.evaluation.judge import JUDGE_ENV, _cached_pretrained, parse_judge_spec

    js = parse_judge_spec(spec or os.environ.get(JUDGE_ENV) or None)
    path = js.checkpoint if js.checkpoint is not None else _cached_pretrained(js.model, js.pretrained_tag, None)
    return {"name": js.label, "checkpoint": str(path), "checkpoint_sha256": file_sha256(Path(path))}


def _provenance(model, options: BenchOptions, method, hparams, corpus_sha: str, n_rows: int,
                judge_info: dict | None) -> dict[str, Any]:
    from engine.hashing import module_hash

    pipe = model.pipeline
    out: dict[str, Any] = {
        "options": {**options.to_dict(), "hparams": hparams.to_dict()},
        "method": method.name, "hparams": hparams.to_dict(),
        "model": {"source": model.source, "path": str(model.path), "kind": model.kind,
                  "encoder_hash": model.encoder_hash(), "weights_hash": model.weights_hash(),
                  "dtype": getattr(model, "dtype", None),
                  "unet_hash": module_hash(pipe.unet) if pipe is not None and hasattr(pipe, "unet") else None},
        "corpus": {"path": str(Path(options.file).expanduser().resolve()), "sha256": corpus_sha, "rows": n_rows},
        "versions": library_versions(), "device": str(model.device),
        "text": {"similarity": "l2", "temperature": 1.0}, "processes": process_info()[1],
    }
    if not options.text_only and pipe is not None:
        from engine.evaluation.generation import resolution

        cfg = options.image_config()
        h, w = resolution(pipe, cfg.generation)
        fp16 = model.device.type == "cuda" and cfg.generation.fp16
        out["image"] = {"seeds": cfg.seed_list, "steps": cfg.generation.steps, "guidance": cfg.generation.guidance,
                        "scheduler": type(pipe.scheduler).__name__, "size": [h, w],
                        "dtype": "float16" if fp16 else "float32", "judge": judge_info,
                        "captions": str(options.captions_path()), "n_captions": options.n_captions,
                        "captions_sha256": file_sha256(options.captions_path()) if options.quality and options.n_captions
                        else None}
    out["dtype"] = str(next(model.text_encoder.parameters()).dtype).removeprefix("torch.")
    return out


# ----------------------------------------------------------------------------------- references


def _reference_key(config: dict[str, Any], space: str) -> str:
    """Baseline/oracle scores depend on the model, the rows and the space's settings, not the method."""
    shared = {"model": config["model"], "corpus": config["corpus"], "space": space,
              "settings": config.get("image") if space in ("image", "quality") else config["text"]}
    shared["device"] = config["device"]
    return digest(shared)


def _references(ws, key: str, space: str, compute: Callable[[], tuple[list[EditScores], list[EditScores]]],
                n: int) -> tuple[list[EditScores], list[EditScores]]:
    from store.bench_runs import get_references, put_references

    def stored():
        base, orc = get_references(ws.db, key, space, "baseline"), get_references(ws.db, key, space, "oracle")
        return (base, orc) if len(base) == n and len(orc) == n else None

    found = from_main(stored)  # one answer for every process: all compute, or none
    if found is not None:
        base, orc = found
        return [from_json(base[i]) for i in range(n)], [from_json(orc[i]) for i in range(n)]
    b, o = compute()
    if is_main_process():
        put_references(ws.db, key, space, "baseline", {i: to_json(s) for i, s in enumerate(b)})
        put_references(ws.db, key, space, "oracle", {i: to_json(s) for i, s in enumerate(o)})
    return b, o


# ----------------------------------------------------------------------------------- the run


class _Progress:
    """Two bars: rows done, images rendered (every image-producing step goes through ``images_step``)."""

    def __init__(self, cb: ProgressCallback | None, n_rows: int, n_images: int):
        self.cb, self.n_rows, self.n_images, self.images = cb, n_rows, n_images, 0

    def row(self, done: int, detail: str) -> None:
        if self.cb:
            self.cb(Progress("rows", done, self.n_rows, detail))

    def _emit(self, done: int, detail: str = "") -> None:
        self.images = done
        if self.cb and self.n_images:
            self.cb(Progress("images", min(done, self.n_images), self.n_images, detail))

    def images_step(self, count: int, fn: Callable[[ProgressCallback], Any]) -> Any:
        start = self.images
        out = fn(lambda p: self._emit(start + p.done, p.detail))
        self._emit(start + count)
        return out


def run_bench(ws, options: BenchOptions, *, on_progress: ProgressCallback | None = None,
              on_row_start: RowHook | None = None, rerun_of: int | None = None,
              same_model: dict[str, Any] | None = None) -> BenchReport:
    """Benchmark ``options.method`` on every row of ``options.file``; stores and returns the run.

    Each row is edited as a queued job would be (every planned encoder slot, the method's own
    insertion and checks). ``same_model``: a rerun's recorded model hashes, which must match."""
    from engine.evaluation import cross_attn
    from engine.evaluation.bench_images import images_per_request, request_image_scores
    from engine.evaluation.text_metrics import FeatureCache, text_scores
    from engine.methods import get_method
    from engine.models import load_tokenizer, token_limit
    from store.base_models import get_base_model
    from store.bench_runs import insert_bench_run

    t_start = time.perf_counter()
    method = get_method(options.method)
    options = _resolve_judge(ws, _resolve_stats(ws, options))
    if options.seeds < 1 or options.steps < 1:
        raise BenchError("--seeds and --steps must be >= 1")
    source = options.model or get_base_model(ws.db, ws.history().base_model_id).path
    tok = load_tokenizer(source)
    requests = read_rows(options.file, tok, token_limit(tok), options.format, options.limit, options.negatives)
    require_work_for_all(len(requests), "rows")
    if not is_main_process():
        on_progress = None  # the main process reports
    corpus_sha = file_sha256(Path(options.file).expanduser())
    model = _load(ws, options)
    hparams = method.hparams_from_dict(options.hparams, model)
    method.check(model)
    method.check_hparams(model, hparams)  # e.g. --hp layer=999: one line before any row, nothing stored
    images = not options.text_only
    if images and model.pipeline is None:
        raise BenchError(f"{model.path} is a text encoder only; image space needs a pipeline (use --text-only)")
    judge = judge_info = None
    if images:
        from engine.evaluation.judge import load_judge

        judge = load_judge(options.judge, process_device(options.device))
        judge_info = _judge_provenance(options.judge)
    config = _provenance(model, options, method, hparams, corpus_sha, len(requests), judge_info)
    if same_model is not None:
        _check_same_model(config["model"], same_model, rerun_of)
    notes: list[str] = []
    n = len(requests)
    img_cfg = options.image_config()
    captions: list[str] = []
    if images and options.quality and options.n_captions > 0:
        from engine.evaluation.quality import load_captions

        captions = load_captions(options.captions_path(), options.n_captions)
    n_images = 0
    if images:
        n_images = sum(images_per_request(r, options.seeds) for r in requests) + len(captions) * (n + 1)
        n_images += sum(images_per_request(r, options.seeds, oracle=True) for r in requests)
    progress = _Progress(on_progress, n, n_images)

    # Everything the unedited model says, before any edit: frozen features and the references.
    spaces = ["text"]
    text_frozen = FeatureCache.frozen(model, None)
    all_texts = [t for r in requests for t in cross_attn.request_texts(r)]
    text_frozen.get(all_texts)
    kv_frozen = None
    if cross_attn.available(model):
        spaces.append("xattn")
        kv_frozen = cross_attn.frozen_kv(model)
        kv_frozen.get(all_texts)
    else:
        notes.append("cross-attention proxy skipped: the model has no UNet cross-attention")
    scorers: dict[str, Callable[[EditRequest], EditScores]] = {
        "text": lambda r: text_scores(model, text_frozen, r),
    }
    if kv_frozen is not None:
        scorers["xattn"] = lambda r: cross_attn.cross_attn_scores(model, kv_frozen, r)

    def text_like_refs(space: str):
        def compute():
            base = [scorers[space](r) for r in requests]
            orc = [with_specificity(scorers[space](oracle_request(r)), b) for r, b in zip(requests, base)]
            return base, orc
        return compute

    refs = {s: _references(ws, _reference_key(config, s), s, text_like_refs(s), n) for s in spaces}
    if images:
        spaces.append("image")

        n_ref = sum(images_per_request(r, options.seeds, oracle=True) for r in requests)
        refs["image"] = progress.images_step(n_ref, lambda cb: _references(
            ws, _reference_key(config, "image"), "image",
            lambda: request_image_scores(model, requests, img_cfg, judge, oracle=True, on_progress=cb), n))
    quality = None
    if captions:
        from refact_tui.services.bench_quality import CaptionQuality

        quality = CaptionQuality(ws, _reference_key(config, "quality"), model, judge, captions, options,
                                 progress.images_step)
        quality.before()

    context = _edit_context(ws, options)
    base_hash = method.weights_hash(model, hparams)  # every matrix the method may edit, every slot
    precomputed, shared_s = _vectorised(method, model, requests, hparams, options, context, notes)
    distributed = is_distributed()
    if quality is not None and distributed and quality.fid_ok:
        quality.fid_ok = False  # each process keeps its own rows' images; the CLIP score is gathered
        notes.append(f"FID skipped: rows were scored by {process_info()[1]} processes (run one process for FID)")
    done_here = 0

    def score_row(i: int) -> tuple[BenchRow, float | None]:
        nonlocal done_here
        req = requests[i]
        if on_row_start is not None:
            on_row_start(model, i)
        h = method.weights_hash(model, hparams)
        if h != base_hash:
            raise DeltaIntegrityError(f"before row {i + 1} the edited weights differ from the base; "
                                      "an earlier row's edit leaked (bug); nothing was stored")
        t0 = time.perf_counter()
        error, outcome, undo = None, None, None
        try:
            outcome = precomputed[i] if precomputed is not None else method.compute(model, [req], hparams, context)
            undo = outcome.insert(model)  # as the worker inserts it (ReFACT: W k_e == v* per slot)
        except (EngineError, ValueError) as exc:  # a refused row is scored unedited and marked
            outcome, error = None, f"edit failed: {' '.join(str(exc).split())}"
        seconds = time.perf_counter() - t0 + shared_s
        scores: dict[str, EditScores] = {}
        caption_mean = None
        try:
            for space, score in scorers.items():
                scores[space] = score(req)
            if images:
                scores["image"] = progress.images_step(images_per_request(req, options.seeds), lambda cb: (
                    request_image_scores(model, [req], img_cfg, judge, on_progress=cb)[0][0]))
                if quality is not None:
                    quality.after_row()
                    caption_mean = quality.after_means[-1]
        finally:
            if undo is not None:
                undo()
        done_here += 1
        progress.row(done_here, req.prompt)
        return BenchRow(i, req, scores, seconds, h, error, edited_parts(outcome)), caption_mean

    # rows over processes in contiguous blocks, gathered in row order (one process: a plain loop)
    scored = run_sharded(list(range(n)), score_row)
    rows = [row for row, _ in scored]
    if quality is not None and distributed:
        quality.after_means = [m for _, m in scored]
    if all(r.error for r in rows):
        raise BenchError(f"every edit of the run failed ({rows[0].error.removeprefix('edit failed: ')}); "
                         "nothing was stored; check the method's hyperparameters")

    aggregates = {s: {"method": aggregate([r.scores[s] for r in rows]), "baseline": aggregate(refs[s][0]),
                      "oracle": aggregate(refs[s][1])} for s in spaces}
    quality_out = quality.result(notes) if quality is not None else {}
    summary = {"aggregates": aggregates, "notes": notes, "quality": quality_out,
               "edit_seconds": [r.seconds for r in rows], "edited": [r.edited for r in rows]}
    total = time.perf_counter() - t_start
    stored_id = from_main(lambda: insert_bench_run(
        ws.db, method=method.name, hparams=hparams.to_dict(), config=config,
        corpus_path=config["corpus"]["path"], corpus_sha256=corpus_sha, summary=summary, seconds=total,
        rows=[{"row_index": r.index, "request": r.request.to_dict(), "metrics": r.metrics, "failed": r.failed,
               "scores": {s: to_json(v) for s, v in r.scores.items()}, "seconds": r.seconds,
               "weights_hash": r.weights_hash} for r in rows],
        rerun_of=rerun_of,
    ).id)
    return BenchReport(stored_id, method.name, rows, aggregates, config, notes, quality_out, total)


def _resolve_stats(ws, options: BenchOptions) -> BenchOptions:
    from refact_tui.services.runner import stats_settings

    corpus, samples = stats_settings(ws)
    return replace(options, stats_samples=options.stats_samples if options.stats_samples is not None else samples,
                   stats_corpus=options.stats_corpus or (str(corpus) if corpus else None))


def _resolve_judge(ws, options: BenchOptions) -> BenchOptions:
    """The judge as `refact eval` picks it: --judge, else $REFACT_JUDGE, else the workspace's."""
    from refact_tui.services.eval_image import with_workspace_judge

    return replace(options, judge=with_workspace_judge(ws, options.image_config()).judge)


def _edit_context(ws, options: BenchOptions):
    from engine.covariance import SecondMomentStore
    from engine.methods.base import EditContext

    corpus = Path(options.stats_corpus) if options.stats_corpus else None
    return EditContext(second_moments=SecondMomentStore(Path(ws.stats_dir)), corpus=corpus,
                       n_samples=options.stats_samples)


def edited_parts(outcome) -> list[dict[str, Any]]:
    """What a row's edit changed: each encoder slot and layer, or each other component (TIME / UCE's
    UNet) with a summary of its matrices; [] when the edit failed."""
    if outcome is None:
        return []
    if outcome.slots:
        return [{"slot": r.slot, "layer": r.layer, "module": r.module} for r in outcome.slots]
    return [{"slot": c, "layer": None, "module": outcome.module} for c in outcome.delta.components]


def _vectorised(method, model, requests, hparams, options: BenchOptions, context, notes: list[str]):
    """Every row's edit at once on the base model when the method shares work between them (ReFACT:
    the v* of all rows vectorised, per slot); a ReFACT run's notes say which path computed its v*
    (both agree to 1e-5, docs/BENCH.md)."""
    if not method.vectorised:
        return None, 0.0
    single = "ReFACT v* computed row by row (engine.methods.refact.edit.compute_edit, as single edits)"
    if not options.vectorised or len(requests) < 2:
        notes.append(single + ("" if options.vectorised else "; vectorised v* switched off"))
        return None, 0.0
    t0 = time.perf_counter()
    try:
        outcomes = method.compute_each(model, requests, hparams, context)
    except (EngineError, ValueError) as exc:
        notes.append(f"vectorised v* not used ({' '.join(str(exc).split())}); rows edited one by one")
        return None, 0.0
    notes.append("ReFACT v* vectorised over all rows, per slot (engine.methods.refact.edit.compute_values); "
                 "seconds per row = batch time / rows")
    return outcomes, (time.perf_counter() - t0) / len(requests)


def _check_same_model(now: dict[str, Any], recorded: dict[str, Any], run_id: int | None) -> None:
    """A rerun edits the model it recorded: every recorded weights hash must match (BenchError)."""
    for key in ("encoder_hash", "weights_hash", "unet_hash"):
        if recorded.get(key) is not None and now.get(key) != recorded.get(key):
            raise BenchError(f"the model at {now.get('path')} is not the one bench run {run_id} edited "
                             f"({key.replace('_', ' ')} {str(now.get(key))[:12]} vs {str(recorded[key])[:12]}); "
                             "restore it to rerun, or run `refact bench FILE` for a new run")


# ----------------------------------------------------------------------------------- stored runs


def rerun_bench(ws, run_id: int, *, on_progress: ProgressCallback | None = None) -> BenchReport:
    """Run a stored bench again with its stored options and full hyperparameters."""
    from store.bench_runs import get_bench_run

    rec = get_bench_run(ws.db, run_id)
    opts = BenchOptions.from_dict(rec.config.get("options", {}))
    path = Path(opts.file).expanduser()
    if not path.is_file():
        raise BenchError(f"bench run {run_id} read {path}, which is gone; restore it to rerun")
    if file_sha256(path) != rec.corpus_sha256:
        raise BenchError(f"{path} changed since bench run {run_id} (sha256 differs); restore it to rerun exactly")
    return run_bench(ws, replace(opts, hparams=dict(rec.hparams)), on_progress=on_progress, rerun_of=run_id,
                     same_model=rec.config.get("model", {}))
