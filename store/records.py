"""Row dataclasses returned by the store repositories (one per table; JSON columns decoded)."""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, dataclass, fields
from typing import Any, Callable, ClassVar, Self

from engine.events import StepEvent
from engine.methods.refact.hparams import ReFACTHParams
from engine.request import EditRequest
from store.errors import CorruptDatabaseError
from store.states import EditKind, EditStatus, JobKind, JobPhase, JobState


def _json(text: str | None) -> dict[str, Any]:
    return json.loads(text) if text else {}


def _nan(value: float | None) -> float:
    # SQLite stores NaN as NULL; step rows read NULL back as NaN.
    return math.nan if value is None else float(value)


def dump_json(value: Any) -> str:
    """Compact, key-sorted JSON for TEXT columns (non-ASCII kept as is)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _request(text: str) -> EditRequest:
    return EditRequest.from_dict(json.loads(text))


def _hparams(text: str) -> ReFACTHParams:
    return ReFACTHParams.from_dict(json.loads(text))


def _timings(text: str | None) -> dict[str, float]:
    return {k: float(v) for k, v in _json(text).items()}


def _method_hparams(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def dump_method_hparams(value: dict[str, Any] | None) -> str | None:
    """The method_hparams_json column of a method's own hyperparameters (NULL for none)."""
    return None if value is None else dump_json(value)


def _phase(value: str | None) -> JobPhase | None:
    return None if value is None else JobPhase(value)


class _Row:
    """``from_row``: each dataclass field reads the column of its name, except those ``_columns`` maps
    to (column, decoder): JSON columns, SQLite integers read as bool, NULL read as NaN."""

    _columns: ClassVar[dict[str, tuple[str, Callable[[Any], Any]]]] = {}
    _table: ClassVar[str] = "a"

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> Self:
        values = {}
        for f in fields(cls):
            column, decode = cls._columns.get(f.name, (f.name, None))
            if column not in r and f.default is not MISSING:
                continue  # a column added by a later migration, read through an older query
            if decode is None:
                values[f.name] = r[column]
                continue
            try:
                values[f.name] = decode(r[column])
            except Exception as exc:  # noqa: BLE001 - any bad stored value is a damaged workspace
                what = " ".join(str(exc).split())[:120] or type(exc).__name__
                raise CorruptDatabaseError(
                    f"{cls._table} row {r.get('id', '?')} has an unreadable {column} ({what})"
                ) from None
        return cls(**values)


@dataclass(frozen=True)
class BaseModelRow(_Row):
    _table = "base_models"
    id: int
    source: str
    path: str
    kind: str
    encoder_family: str
    encoder_hash: str
    config: dict[str, Any]
    created_at: float
    dtype: str | None = None  # the default load dtype (None: as the files store it)
    files_hash: str | None = None  # sha256 of the stored text-encoder files (dtype-free identity)

    _columns = {"config": ("config_json", _json)}


@dataclass(frozen=True)
class HistoryRow(_Row):
    _table = "histories"
    id: int
    base_model_id: int
    name: str
    parent_id: int | None
    forked_at_seq: int | None
    head_seq: int
    state: str
    note: str
    created_at: float


@dataclass(frozen=True)
class JobRow(_Row):
    _table = "jobs"
    id: int
    history_id: int
    kind: JobKind
    position: float
    request: EditRequest
    hparams: ReFACTHParams
    state: JobState
    attempts: int
    worker_id: str | None
    heartbeat_at: float | None
    error: str | None
    edit_id: int | None
    cancel_requested: bool
    created_at: float
    started_at: float | None
    finished_at: float | None
    lease_generation: int | None = None     # the worker lease generation that claimed it
    phase: JobPhase | None = None           # while running: claimed | loading | optimizing | committing
    crashes: int = 0                        # attempts that died while optimizing or committing
    batch_token: str | None = None          # shared by the jobs one batch run claimed together
    method: str = "refact"                  # the edit method (engine.methods registry name)
    method_hparams: dict[str, Any] | None = None  # that method's own hyperparameters (None: ReFACT's are hparams)

    _columns = {
        "request": ("request_json", _request), "hparams": ("hparams_json", _hparams),
        "cancel_requested": ("cancel_requested", bool), "kind": ("kind", JobKind), "state": ("state", JobState),
        "phase": ("phase", _phase), "method_hparams": ("method_hparams_json", _method_hparams),
    }


@dataclass(frozen=True)
class EditRow(_Row):
    _table = "edits"
    id: int
    history_id: int
    seq: int
    job_id: int | None
    source_edit_id: int | None
    request: EditRequest
    hparams: ReFACTHParams
    status: EditStatus
    layer: int
    module: str
    delta_path: str | None
    delta_sha256: str | None
    weights_hash: str | None
    steps_run: int
    early_stopped: bool
    p_target: float | None
    delta_norm: float | None
    division_factor: float | None
    timings: dict[str, float]
    device: str
    error: str | None
    created_at: float
    rolled_back_at: float | None
    lease_generation: int | None = None     # worker lease generation that committed it (fencing token)
    kind: EditKind = EditKind.EDIT          # edit | batch (N requests in one delta; see store.batches)
    method: str = "refact"                  # the edit method (engine.methods registry name)
    method_hparams: dict[str, Any] | None = None  # that method's own hyperparameters (None: ReFACT's are hparams)

    _columns = {
        "request": ("request_json", _request), "hparams": ("hparams_json", _hparams),
        "early_stopped": ("early_stopped", bool), "timings": ("timings_json", _timings),
        "status": ("status", EditStatus), "kind": ("kind", EditKind),
        "method_hparams": ("method_hparams_json", _method_hparams),
    }


@dataclass(frozen=True)
class StepRow(StepEvent, _Row):
    """A stored v* step: the engine's StepEvent plus where it belongs."""

    _table = "steps"
    edit_id: int | None
    job_id: int
    attempt: int
    slot: str = "text_encoder"  # the encoder slot whose optimisation the row records

    _columns = {name: (name, _nan) for name in ("loss", "nll", "wd", "p_target", "delta_norm")}


@dataclass(frozen=True)
class EvalRunRow(_Row):
    _table = "eval_runs"
    id: int
    history_id: int
    at_seq: int
    space: str
    config: dict[str, Any]
    state: str
    error: str | None
    started_at: float
    finished_at: float | None

    _columns = {"config": ("config_json", _json)}


@dataclass(frozen=True)
class MetricValue:
    """One metric value of an edit (edit_id None = the whole history; slot '' = the whole edit, else that
    encoder slot's own value)."""

    edit_id: int | None
    space: str
    name: str
    value: float
    std: float | None
    n: int
    slot: str = ""


@dataclass(frozen=True, kw_only=True)
class MetricRow(MetricValue, _Row):
    """A stored metric value: its run, progress (n of total) and time."""

    _table = "metrics"
    id: int
    eval_run_id: int | None
    total: int
    final: bool
    created_at: float

    _columns = {"final": ("final", bool)}

    @property
    def progress(self) -> float:
        """Fraction of items scored (1.0 when the total is unknown and the value is final)."""
        return metric_progress(self.n, self.total, self.final)


def metric_progress(n: int, total: int, final: bool) -> float:
    """Progress of a metric that has scored ``n`` of ``total`` items."""
    if total > 0:
        return min(1.0, n / total)
    return 1.0 if final else 0.0


@dataclass(frozen=True)
class ArtifactRow(_Row):
    _table = "artifacts"
    id: int
    owner_kind: str
    owner_id: int
    kind: str
    path: str
    sha256: str | None
    bytes: int | None
    meta: dict[str, Any]
    created_at: float

    _columns = {"meta": ("meta_json", _json)}


@dataclass(frozen=True)
class EventRow(_Row):
    _table = "events"
    id: int
    ts: float
    level: str
    source: str
    job_id: int | None
    message: str


@dataclass(frozen=True)
class LeaseRow(_Row):
    _table = "leases"
    name: str
    holder: str
    pid: int
    host: str
    acquired_at: float
    heartbeat_at: float
    generation: int = 0


__all__ = [
    "EditKind", "EditStatus", "JobKind", "JobPhase", "JobState",
    "ArtifactRow", "BaseModelRow", "EditRow", "EvalRunRow", "EventRow", "HistoryRow", "JobRow",
    "LeaseRow", "MetricRow", "MetricValue", "StepRow", "dump_json", "dump_method_hparams",
]
