"""Queue use-cases shared by the CLI and the TUI: add, import, list, reorder, cancel, retry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from engine.hparams import HParamsError, ReFACTHParams
from engine.request import EditRequest
from refact_tui.services.workspace import Workspace
from store import jobs as job_store
from store.base_models import get_base_model
from store.db import transaction
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

    Layer 7 is the paper's choice for the 12-layer SD text encoder; smaller encoders (the tiny test
    model) get their middle layer instead, so a plain `queue add` works on every model.
    """
    base = get_base_model(ws.db, ws.history().base_model_id)
    num_layers = base.config.get("num_layers")
    if num_layers is not None and PAPER_LAYER >= int(num_layers):
        return ReFACTHParams(layer=int(num_layers) // 2)
    return ReFACTHParams()


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


def add_edit(ws: Workspace, request: EditRequest,
             hparams: ReFACTHParams | Mapping[str, Any] | None = None) -> JobRow:
    """Validate a request (RequestError / HParamsError) and queue it on the current history.

    ``hparams`` is a full set, a mapping of overrides onto the workspace default, or None.
    """
    request.validate()
    hparams = resolve_hparams(ws, hparams)
    check_hparams(ws, hparams)
    with transaction(ws.db):
        job = job_store.enqueue(ws.db, ws.history().id, request, hparams)
        log_event(ws.db, "queue", f"queued job {job.id}: {request.prompt!r} -> {request.target!r}", job_id=job.id)
    return job


def _base_tokenizer(ws: Workspace) -> Any | None:
    """The current history's base tokenizer, or None when its folder is gone (jobs then check lengths)."""
    from engine.errors import EngineError
    from engine.models import load_tokenizer

    base = get_base_model(ws.db, ws.history().base_model_id)
    try:
        return load_tokenizer(base.path)
    except EngineError:
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
) -> ImportReport:
    """Queue every request of a file (RoAD / TIMED CSV, JSONL, JSON) in one transaction.

    A file with errors queues nothing unless ``skip_invalid``. Repeats within the file are reported
    and skipped; so are requests already queued, running or applied in the current history unless
    ``allow_duplicates``. Every text is checked against the encoder's token limit with the base
    model's tokenizer (or ``tokenizer``), so an over-long text is reported with its row and column
    instead of failing its job later. Raises ImportFileError for an unreadable / unknown file,
    HParamsError for bad hparams.
    """
    from engine.importers import load_requests  # lazy: only the import command needs it
    from engine.models import token_limit

    path = Path(path)
    hparams = resolve_hparams(ws, hparams)
    check_hparams(ws, hparams)
    tokenizer = tokenizer if tokenizer is not None else _base_tokenizer(ws)
    kwargs = {"max_tokens": token_limit(tokenizer)} if tokenizer is not None else {}
    result = load_requests(path, format=format, skip_invalid=skip_invalid, tokenizer=tokenizer, **kwargs)
    report = ImportReport(path=path, errors=list(result.errors))
    if report.errors and not skip_invalid:
        return report
    report.skipped_invalid = len(result.skipped_rows)
    rows = list(result.requests)
    report.duplicates.extend(
        f"{path.name} row {d.row}: same request as row {d.first_row}" for d in result.duplicates
    )

    history_id = ws.history().id
    pending = set() if allow_duplicates else _pending_keys(ws, history_id)
    to_add: list[EditRequest] = []
    for row in rows:
        if row.request.key() in pending:
            report.duplicates.append(
                f"{path.name} row {row.row}: {row.request.prompt!r} -> {row.request.target!r} "
                "is already queued or applied"
            )
            continue
        to_add.append(row.request)

    with transaction(ws.db):
        for request in to_add:
            report.added.append(job_store.enqueue(ws.db, history_id, request, hparams))
        if to_add:
            log_event(ws.db, "queue", f"imported {len(to_add)} edit(s) from {path.name}")
    return report


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
