"""Row dataclasses returned by the store repositories (one per table; JSON columns decoded)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from typing import Any

from engine.hparams import ReFACTHParams
from engine.request import EditRequest


def _json(text: str | None) -> dict[str, Any]:
    return json.loads(text) if text else {}


def _nan(value: float | None) -> float:
    # SQLite stores NaN as NULL; step rows read NULL back as NaN.
    return math.nan if value is None else float(value)


def dump_json(value: Any) -> str:
    """Compact, key-sorted JSON for TEXT columns (non-ASCII kept as is)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


@dataclass(frozen=True)
class BaseModelRow:
    id: int
    source: str
    path: str
    kind: str
    encoder_family: str
    encoder_hash: str
    config: dict[str, Any]
    created_at: float

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> "BaseModelRow":
        return cls(r["id"], r["source"], r["path"], r["kind"], r["encoder_family"], r["encoder_hash"],
                   _json(r["config_json"]), r["created_at"])


@dataclass(frozen=True)
class HistoryRow:
    id: int
    base_model_id: int
    name: str
    parent_id: int | None
    forked_at_seq: int | None
    head_seq: int
    state: str
    note: str
    created_at: float

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> "HistoryRow":
        return cls(**{f.name: r[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class JobRow:
    id: int
    history_id: int
    kind: str
    position: float
    request: EditRequest
    hparams: ReFACTHParams
    state: str
    attempts: int
    worker_id: str | None
    heartbeat_at: float | None
    error: str | None
    edit_id: int | None
    cancel_requested: bool
    created_at: float
    started_at: float | None
    finished_at: float | None

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> "JobRow":
        return cls(
            id=r["id"], history_id=r["history_id"], kind=r["kind"], position=r["position"],
            request=EditRequest.from_dict(json.loads(r["request_json"])),
            hparams=ReFACTHParams.from_dict(json.loads(r["hparams_json"])),
            state=r["state"], attempts=r["attempts"], worker_id=r["worker_id"],
            heartbeat_at=r["heartbeat_at"], error=r["error"], edit_id=r["edit_id"],
            cancel_requested=bool(r["cancel_requested"]), created_at=r["created_at"],
            started_at=r["started_at"], finished_at=r["finished_at"],
        )


@dataclass(frozen=True)
class EditRow:
    id: int
    history_id: int
    seq: int
    job_id: int | None
    source_edit_id: int | None
    request: EditRequest
    hparams: ReFACTHParams
    status: str
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

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> "EditRow":
        return cls(
            id=r["id"], history_id=r["history_id"], seq=r["seq"], job_id=r["job_id"],
            source_edit_id=r["source_edit_id"],
            request=EditRequest.from_dict(json.loads(r["request_json"])),
            hparams=ReFACTHParams.from_dict(json.loads(r["hparams_json"])),
            status=r["status"], layer=r["layer"], module=r["module"], delta_path=r["delta_path"],
            delta_sha256=r["delta_sha256"], weights_hash=r["weights_hash"], steps_run=r["steps_run"],
            early_stopped=bool(r["early_stopped"]), p_target=r["p_target"], delta_norm=r["delta_norm"],
            division_factor=r["division_factor"],
            timings={k: float(v) for k, v in _json(r["timings_json"]).items()},
            device=r["device"], error=r["error"], created_at=r["created_at"],
            rolled_back_at=r["rolled_back_at"],
        )


@dataclass(frozen=True)
class StepRow:
    edit_id: int | None
    job_id: int
    attempt: int
    step: int
    loss: float
    nll: float
    wd: float
    p_target: float
    delta_norm: float
    elapsed: float

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> "StepRow":
        return cls(r["edit_id"], r["job_id"], r["attempt"], r["step"], _nan(r["loss"]), _nan(r["nll"]),
                   _nan(r["wd"]), _nan(r["p_target"]), _nan(r["delta_norm"]), r["elapsed"])


@dataclass(frozen=True)
class EvalRunRow:
    id: int
    history_id: int
    at_seq: int
    space: str
    config: dict[str, Any]
    state: str
    error: str | None
    started_at: float
    finished_at: float | None

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> "EvalRunRow":
        return cls(r["id"], r["history_id"], r["at_seq"], r["space"], _json(r["config_json"]), r["state"],
                   r["error"], r["started_at"], r["finished_at"])


@dataclass(frozen=True)
class MetricRow:
    id: int
    eval_run_id: int | None
    edit_id: int | None
    space: str
    name: str
    value: float
    std: float | None
    n: int
    total: int
    final: bool
    created_at: float

    @property
    def progress(self) -> float:
        """Fraction of items scored (1.0 when the total is unknown and the value is final)."""
        if self.total > 0:
            return min(1.0, self.n / self.total)
        return 1.0 if self.final else 0.0

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> "MetricRow":
        return cls(r["id"], r["eval_run_id"], r["edit_id"], r["space"], r["name"], r["value"], r["std"],
                   r["n"], r["total"], bool(r["final"]), r["created_at"])


@dataclass(frozen=True)
class ArtifactRow:
    id: int
    owner_kind: str
    owner_id: int
    kind: str
    path: str
    sha256: str | None
    bytes: int | None
    meta: dict[str, Any]
    created_at: float

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> "ArtifactRow":
        return cls(r["id"], r["owner_kind"], r["owner_id"], r["kind"], r["path"], r["sha256"], r["bytes"],
                   _json(r["meta_json"]), r["created_at"])


@dataclass(frozen=True)
class EventRow:
    id: int
    ts: float
    level: str
    source: str
    job_id: int | None
    message: str

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> "EventRow":
        return cls(**{f.name: r[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class LeaseRow:
    name: str
    holder: str
    pid: int
    host: str
    acquired_at: float
    heartbeat_at: float

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> "LeaseRow":
        return cls(**{f.name: r[f.name] for f in fields(cls)})


__all__ = [
    "ArtifactRow", "BaseModelRow", "EditRow", "EvalRunRow", "EventRow", "HistoryRow", "JobRow",
    "LeaseRow", "MetricRow", "StepRow", "dump_json",
]
