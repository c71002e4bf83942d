"""Queue use-cases shared by the CLI and the TUI: add, import, list, reorder, cancel, retry."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from engine.admission import RequestChecker, TokenLimit
from engine.errors import EngineError
from engine.methods.refact.hparams import PAPER_DEPTH, HParamsError, ReFACTHParams
from engine.request import EditRequest, RequestError
from refact_tui.services.workspace import Workspace
from store import jobs as job_store
from store.base_models import get_base_model
from store.db import get_meta, set_meta, transaction
from store.edits import applied_edits
from store.events import log_event
from store.records import JobRow


@dataclass
class ImportReport:
    """What an import did. ``errors`` are the importer's problems (each names file, row, column)."""

    path: Path
    added: list[JobRow] = field(default_factory=list)
    errors: list[Any] = field(default_factory=list)
    skipped_invalid: int = 0
    duplicates: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing was rejected."""
        return not self.errors

    def summary(self) -> str:
        """One line for the CLI / TUI notification."""
        parts = [f"{len(self.added)} edit(s) queued from {self.path.name}"]
        if self.errors and not self.added and not self.skipped_invalid:
            parts.append(f"{len(self.errors)} error(s), nothing imported (fix them or use --skip-invalid)")
        elif self.skipped_invalid:
            parts.append(f"{self.skipped_invalid} invalid row(s) skipped")
        if self.duplicates:
            parts.append(f"{len(self.duplicates)} duplicate(s) skipped")
        return "; ".join(parts)


PAPER_LAYER = ReFACTHParams().layer


def default_hparams(ws: Workspace) -> ReFACTHParams:
    """The workspace's default hyperparameters: the paper's, with the layer moved into range.

    Layer 7 is the paper's choice for the 12-layer SD text encoder. A first slot whose family has its
    own default depth (SDXL's CLIP-L: 9; engine.slots.FAMILY_DEPTHS, recorded at `refact init`) gets
    that layer; encoders where 7 is out of the first slot's editable range (the tiny test models) get
    the slot's default depth instead, so a plain `queue add` works on every model.
    """
    base = get_base_model(ws.db, ws.history().base_model_id)
    first = next(iter((base.config.get("slots") or {}).values()), None)
    # the temperature `refact init` recorded for the first slot; workspaces made before it keep 1.0
    paper = ReFACTHParams(temperature=float(first.get("temperature", 1.0)) if isinstance(first, dict) else 1.0)
    if isinstance(first, dict) and "default_layer" in first and "editable" in first:
        # the first slot's readout bounds its layers (SDXL's penultimate readout stops two short)
        editable = first["editable"]
        fits = int(editable[0]) <= PAPER_LAYER <= int(editable[1])
        own_depth = float(first.get("default_depth", PAPER_DEPTH)) != PAPER_DEPTH
        return paper.with_overrides(layer=int(first["default_layer"])) if own_depth or not fits else paper
    num_layers = base.config.get("num_layers")
    if num_layers is not None and PAPER_LAYER >= int(num_layers):
        return paper.with_overrides(layer=int(num_layers) // 2)
    return paper


def resolve_hparams(ws: Workspace, hparams: ReFACTHParams | Mapping[str, Any] | None) -> ReFACTHParams:
    """Full hyperparameters from None (workspace default), overrides onto the default, or a full set."""
    if isinstance(hparams, ReFACTHParams):
        return hparams  # the default needs a database read; skip it
    return default_hparams(ws).resolve(hparams)


def check_hparams(ws: Workspace, hparams: ReFACTHParams) -> None:
    """Validate hyperparameters against the current history's base model (layer in range)."""
    hparams.validate()
    base = get_base_model(ws.db, ws.history().base_model_id)
    num_layers = base.config.get("num_layers")
    if num_layers is not None and not 0 <= hparams.layer < int(num_layers):
        raise HParamsError(
            f"layer {hparams.layer} is out of range: the text encoder has {num_layers} layers (0..{int(num_layers) - 1})"
        )
    check_slot_hparams(base.config.get("slots") or {}, hparams)


def check_slot_hparams(slots: Mapping[str, Any], hparams: ReFACTHParams) -> None:
    """--slots / --layer SLOT=N against the base model's encoder slots (as recorded at init): every
    named slot exists and every planned layer reaches its slot's readout. One-line HParamsError."""
    if not slots:
        if hparams.slots or hparams.slot_layers:
            raise HParamsError("this workspace's base model records no encoder slots; re-run `refact init` to use "
                               "--slots or --layer SLOT=N")
        return
    names = list(slots)
    for wanted in (*hparams.slots, *(k for k, _ in hparams.slot_layers)):
        if wanted not in slots:
            raise HParamsError(f"this model has no encoder slot {wanted!r}; its slots are {', '.join(names)}")
    for name in (n for n in names if not hparams.slots or n in hparams.slots):
        info = slots[name]
        layer = hparams.layer_for(name)
        if layer is None:
            layer = hparams.layer if name == names[0] else int(info.get("default_layer", 0))
        low, high = info.get("editable", [0, int(info.get("num_layers", 1)) - 1])
        if not low <= layer <= high:
            raise HParamsError(
                f"layer {layer} is out of range for {name} (editable: layers {low}..{high} of "
                f"{info.get('num_layers')}, {info.get('readout')} readout); pick one with --layer {name}=N"
            )


def add_edit(ws: Workspace, request: EditRequest,
             hparams: ReFACTHParams | Mapping[str, Any] | None = None,
             allow_duplicate: bool = False, checker: RequestChecker | None = None) -> JobRow:
    """Validate a request (RequestError / HParamsError) and queue it on the current history.

    ``hparams`` is a full set, a mapping of overrides onto the workspace default, or None. The
    request gets the checks an import gives each row: every text the worker will encode (the bare
    prompt and every template, per encoder limit) and the subject lookup, and it is refused when
    the same request is already queued, running or applied, unless ``allow_duplicate``.
    """
    request.validate()
    hparams = resolve_hparams(ws, hparams)
    check_hparams(ws, hparams)
    check_method(ws, request)
    checker = checker if checker is not None else request_checker(ws, hparams)
    if checker is not None:
        problems = [*checker.problems(request), *method_text_problems(checker, request)]
        if problems:
            raise RequestError(f"{problems[0]}" + (f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""))
    if not allow_duplicate:
        duplicate = _duplicate_of(ws, request)
        if duplicate is not None:
            raise RequestError(f"the same request is already {duplicate}; pass --allow-duplicate to queue it again")
    with transaction(ws.db):
        job = job_store.enqueue(ws.db, ws.history().id, request, hparams, **_method_columns(request))
        log_event(ws.db, "queue", f"queued job {job.id}: {request.prompt!r} -> {request.target!r}", job_id=job.id)
    return job


def check_method(ws: Workspace, request: EditRequest) -> None:
    """The request's edit method (a TIME / UCE tag in ``extra``) is known, its hyperparameters are
    valid and it can edit the current history's base model (MethodError / MethodRefusedError)."""
    from refact_tui.services.methods import (
        HPARAMS_KEY,
        check_method_for_base,
        method_hparams_of,
        method_of,
        with_method,
    )

    method = method_of(request)
    if method == "refact" and not (request.extra or {}).get(HPARAMS_KEY):
        return
    with_method(request, method, method_hparams_of(request))  # validates name and hyperparameters
    base = get_base_model(ws.db, ws.history().base_model_id)
    check_method_for_base(method, base.kind, base.path)


def method_text_problems(checker: RequestChecker | None, request: EditRequest) -> list[str]:
    """The texts a TIME / UCE request's hyperparameters make the worker encode (UCE's ``preserve``
    concepts) that do not fit the first encoder's limit, the one the UNet is conditioned on."""
    from engine.admission import token_count
    from refact_tui.services.methods import method_hparams_of

    if checker is None or not checker.limits:
        return []
    lim, out = checker.limits[0], []
    for key, value in (method_hparams_of(request) or {}).items():
        texts = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        for i, text in enumerate(t for t in texts if isinstance(t, str)):
            n = token_count(lim.tokenizer, text)
            if n is None or n > lim.limit:
                size = "cannot be tokenized" if n is None else f"is {n} tokens long"
                out.append(f"--hp {key}[{i}] {size}, over the {lim.name} limit of {lim.limit}; shorten it")
    return out


def _slot_tokenizer(ws: Workspace, slot: str = "text_encoder") -> tuple[Any, int] | None:
    """(tokenizer, token limit) of a slot of the current history's base model, or None when its folder
    is gone (jobs then check lengths).

    The tokenizer is engine.token_counts' torch-free one when a stored check (workspace meta, per base
    model and slot) found it gives transformers' ids and the folder is unchanged since; otherwise the
    transformers tokenizer, which is then checked against the torch-free one and the verdict stored, so
    later `queue add` / `queue import` runs skip torch (`refact init` stores it at once).
    """
    from engine.token_counts import CountingRecord

    base = get_base_model(ws.db, ws.history().base_model_id)
    key = f"token_counts:{base.id}:{slot}"
    record = CountingRecord.from_json(get_meta(ws.db, key))
    fast = record.tokenizer() if record is not None and record.limit is not None else None
    if fast is not None:
        return fast, int(record.limit)
    from engine.errors import EngineError
    from engine.models import load_tokenizer, token_limit
    from engine.token_counts import record_for

    try:
        tokenizer = load_tokenizer(base.path, slot)
    except EngineError:
        return None
    limit = token_limit(tokenizer)
    checked = record_for(tokenizer, limit)
    if checked is not None and not ws.read_only:
        set_meta(ws.db, key, checked.to_json())
    return tokenizer, limit


def prepare_token_counts(ws: Workspace) -> None:
    """Check every slot's torch-free tokenizer against transformers now and store the verdicts, so the
    first `queue add` already skips torch (`refact init` calls it while transformers is loaded)."""
    token_limits(ws)


def token_limits(ws: Workspace, tokenizer: Any | None = None, slots: tuple[str, ...] = ()) -> list[TokenLimit]:
    """The (tokenizer, limit) pairs every text of a request must fit, for the current history's base
    model: one per encoder slot (``slots``: only those) with the slot's own limit (77 for CLIP, the
    pipeline's 256/512 for T5); empty when a tokenizer cannot be loaded (jobs then check lengths)."""
    if tokenizer is not None:  # the caller's own (transformers) tokenizer: torch is loaded already
        from engine.models import token_limit

        return [TokenLimit(tokenizer, token_limit(tokenizer))]
    recorded = get_base_model(ws.db, ws.history().base_model_id).config.get("slots") or {}
    if len(recorded) > 1:
        limits = []
        for name, info in recorded.items():
            if slots and name not in slots:
                continue
            found = _slot_tokenizer(ws, name)
            if found is None:
                return []
            limits.append(TokenLimit(found[0], int(info.get("max_length") or found[1]), name))
        return limits
    found = _slot_tokenizer(ws)
    return [] if found is None else [TokenLimit(*found)]


def request_checker(ws: Workspace, hparams: ReFACTHParams, tokenizer: Any | None = None) -> RequestChecker | None:
    """The admission check of requests queued with ``hparams`` (its templates), or None (no tokenizer)."""
    limits = token_limits(ws, tokenizer, tuple(hparams.slots))
    return RequestChecker(tuple(limits), tuple(hparams.templates)) if limits else None


def _duplicate_of(ws: Workspace, request: EditRequest) -> str | None:
    """'queued as job N' / 'applied as edit N' when the same request is pending or applied, else None."""
    key, history_id = request.key(), ws.history().id
    for j in job_store.list_jobs(ws.db, history_id, ("queued", "running")):
        if j.request.key() == key:
            return f"{j.state} as job {j.id}"
    for e in applied_edits(ws.db, history_id):
        if e.request.key() == key:
            return f"applied as edit {e.seq}"
    return None


def _pending_keys(ws: Workspace, history_id: int) -> set[tuple[str, str, str, str]]:
    keys = {j.request.key() for j in job_store.list_jobs(ws.db, history_id, ("queued", "running"))}
    keys.update(e.request.key() for e in applied_edits(ws.db, history_id))
    return keys


def import_requests(
    ws: Workspace,
    path: Path | str,
    format: str = "auto",
    skip_invalid: bool = False,
    hparams: ReFACTHParams | Mapping[str, Any] | None = None,
    allow_duplicates: bool = False,
    tokenizer: Any | None = None,
    encoding_errors: str = "strict",
    method: str | None = None,
    method_hparams: Mapping[str, Any] | None = None,
    negatives: Path | str | None = None,
) -> ImportReport:
    """Queue every request of a file (RoAD / TIMED CSV, JSONL, JSON) in one transaction.

    A file with errors queues nothing unless ``skip_invalid``. Repeats within the file are reported
    and skipped; so are requests already queued, running or applied in the current history unless
    ``allow_duplicates``. Every text gets ``add_edit``'s admission check with the base model's
    tokenizer (or ``tokenizer``): the prompt inside every template, the subject lookup, each limit,
    so such a row is reported with its row and column instead of failing its job later.
    A JSON row may carry its own ``hparams`` object (overrides onto ``hparams``), checked like the
    CLI options. ``encoding_errors="replace"`` reads invalid UTF-8 as U+FFFD. ``method`` ("time", "uce")
    queues every row as that method's job with ``method_hparams`` (like `queue add --method --hp`); a
    row whose ``extra`` names a method of its own is checked like one (and must agree with ``method``).
    Raises ImportFileError for an unreadable / unknown / non-UTF-8 file, HParamsError for bad hparams,
    MethodError / MethodRefusedError for a bad method or one that cannot edit the base model (nothing
    is read or queued then). ``negatives``: an ICEB file's class-prompt file (specificity probes).
    """
    from engine.importers import ImportProblem, load_requests  # lazy: only the import command needs it

    path = Path(path)
    hparams = resolve_hparams(ws, hparams)
    check_hparams(ws, hparams)
    tag = _import_method(ws, method, method_hparams)
    checker = request_checker(ws, hparams, tokenizer)
    result = load_requests(path, format=format, skip_invalid=skip_invalid, checker=checker,
                           encoding_errors=encoding_errors, negatives=negatives)
    report = ImportReport(path=path, errors=list(result.errors))
    if report.errors and not skip_invalid:
        return report
    report.skipped_invalid = len(result.skipped_rows)
    rows = list(result.requests)
    report.duplicates.extend(
        f"{path.name} row {d.row}: same request as row {d.first_row}" for d in result.duplicates
    )

    # a JSON row's own "hparams" apply onto the import's; the layer is checked against the model here
    row_hparams: dict[int, ReFACTHParams] = {}
    tagged = []
    for row in rows:
        try:
            row_hparams[row.row] = hparams.with_overrides(**row.hparams) if row.hparams else hparams
            check_hparams(ws, row_hparams[row.row])
        except HParamsError as exc:
            report.errors.append(ImportProblem(str(path), row.row, "hparams", str(exc)))
        try:  # the import's method tag, or the row's own one checked like `queue add` checks it
            row = replace(row, request=tag(row.request)) if tag is not None else row
            if tag is None:
                check_method(ws, row.request)
            for problem in method_text_problems(checker, row.request)[:1]:
                report.errors.append(ImportProblem(str(path), row.row, "extra.method", problem))
        except EngineError as exc:  # MethodError / MethodRefusedError
            report.errors.append(ImportProblem(str(path), row.row, "extra.method", str(exc)))
        tagged.append(row)
    rows = tagged
    if report.errors and not skip_invalid:
        return report
    bad_rows = {e.row for e in report.errors if getattr(e, "column", None) in ("hparams", "extra.method")}
    report.skipped_invalid += sum(1 for row in rows if row.row in bad_rows)
    rows = [row for row in rows if row.row not in bad_rows]

    history_id = ws.history().id
    pending = set() if allow_duplicates else _pending_keys(ws, history_id)
    to_add: list[tuple[EditRequest, ReFACTHParams]] = []
    for row in rows:
        if row.request.key() in pending:
            report.duplicates.append(
                f"{path.name} row {row.row}: {row.request.prompt!r} -> {row.request.target!r} "
                "is already queued or applied"
            )
            continue
        to_add.append((row.request, row_hparams[row.row]))

    with transaction(ws.db):
        for request, row_hp in to_add:
            report.added.append(job_store.enqueue(ws.db, history_id, request, row_hp, **_method_columns(request)))
        if to_add:
            log_event(ws.db, "queue", f"imported {len(to_add)} edit(s) from {path.name}")
    return report


def _import_method(ws: Workspace, method: str | None,
                   method_hparams: Mapping[str, Any] | None) -> Callable[[EditRequest], EditRequest] | None:
    """The tagger an import applies to each row for ``method`` (None: rows keep their own tags),
    after refusing a bad method, bad hyperparameters or a base model the method cannot edit."""
    from engine.methods import MethodError, get_method
    from refact_tui.services.methods import METHOD_KEY, check_method_for_base, with_method

    if method is None:
        if method_hparams:
            raise MethodError("method hyperparameters (--hp) need --method time or --method uce")
        return None
    name = get_method(method).name
    probe = with_method(EditRequest(prompt="x", source="x", target="y"), name, method_hparams)
    base = get_base_model(ws.db, ws.history().base_model_id)
    check_method_for_base(name, base.kind, base.path)

    def tag(request: EditRequest) -> EditRequest:
        own = (request.extra or {}).get(METHOD_KEY)
        if own is not None and str(own).strip().lower() != name:
            raise MethodError(f"the row names edit method {own!r} but the import asks for {name}; "
                              "drop one of them")
        if name == "refact":
            return request
        return replace(request, extra={**(request.extra or {}), **(probe.extra or {})})

    return tag


def list_queue(ws: Workspace, states: list[str] | tuple[str, ...] | None = None, all_histories: bool = False) -> list[JobRow]:
    """Jobs of the current history (or all) in queue order, optionally filtered by state."""
    return job_store.list_jobs(ws.db, None if all_histories else ws.history().id, states)


def remove(ws: Workspace, job_id: int) -> JobRow:
    """Delete a queued, failed or cancelled job."""
    return job_store.remove_job(ws.db, job_id)


def move(ws: Workspace, job_id: int, index: int) -> JobRow:
    """Move a queued job to a 0-based place among the queued jobs."""
    return job_store.move_job(ws.db, job_id, index)


def clear(ws: Workspace) -> int:
    """Delete the current history's queued jobs; returns how many."""
    with transaction(ws.db):
        n = job_store.clear_queue(ws.db, ws.history().id)
        if n:
            log_event(ws.db, "queue", f"cleared {n} queued job(s)")
    return n


def cancel(ws: Workspace, job_id: int) -> JobRow:
    """Cancel a queued job, or ask the worker to stop a running one."""
    return job_store.cancel_job(ws.db, job_id)


def retry(ws: Workspace, job_id: int) -> JobRow:
    """Put a failed or cancelled job back at the end of the queue."""
    return job_store.retry_job(ws.db, job_id)


def retry_many(ws: Workspace, job_ids: list[int] = (), all_failed: bool = False,
               reason: str | None = None) -> list[JobRow]:
    """Requeue several jobs in one transaction: ``job_ids`` (failed or cancelled), and with ``all_failed``
    every failed job, narrowed by ``reason`` (text its error contains) when given. StoreError, nothing
    requeued, if an id cannot be retried or nothing is selected."""
    from store.errors import StoreError

    if reason is not None and not reason.strip():
        raise StoreError("--reason is empty; give text the failed jobs' errors contain, e.g. --reason batch")
    if reason is not None and not all_failed and not job_ids:
        all_failed = True  # --reason alone filters the failed jobs
    with transaction(ws.db):
        ids = list(dict.fromkeys([*job_ids, *(job_store.failed_job_ids(ws.db, reason) if all_failed else [])]))
        if not ids:
            raise StoreError("no job to retry" + (f": no failed job's error contains {reason!r}" if reason else
                             "; pass job ids, --all-failed or --reason TEXT"))
        jobs = [job_store.retry_job(ws.db, i) for i in ids]
        log_event(ws.db, "queue", f"requeued job(s) {ids}")
    return jobs


def _method_columns(request: EditRequest) -> dict:
    """The jobs.method / method_hparams columns of a request tagged by ``with_method``."""
    from refact_tui.services.methods import method_hparams_of, method_of

    return {"method": method_of(request), "method_hparams": method_hparams_of(request)}
