"""What the queue worker reports and how it is configured: its event types, summary and settings.

Split from ``services.worker`` so the CLI and the TUI can name the events without the worker loop.
"""

from __future__ import annotations

import math
import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from engine.events import Progress, StepEvent
from engine.methods.refact.batch import DEFAULT_LAMBDA, MAX_ROUNDS, MODES, ROUND_MODES, BatchInsertConfig
from engine.methods.refact.hparams import HParamsError
from engine.methods.refact.joint_solve import residual_bound

# ----------------------------------------------------------------------------- events


@dataclass(frozen=True)
class JobStarted:
    """A job was claimed and its edit is about to be computed."""

    job_id: int
    history_id: int
    attempt: int
    prompt: str
    source: str
    target: str
    max_steps: int
    layer: int


@dataclass(frozen=True)
class JobFinished:
    """The job's edit is recorded and applied to the working model."""

    job_id: int
    edit_id: int
    seq: int
    p_target: float
    steps_run: int
    early_stopped: bool
    seconds: float
    prob_threshold: float = 0.99  # the job's early-stop threshold (services.convergence)


@dataclass(frozen=True)
class JobFailed:
    """The job ended without an edit; requeued=True when it will be redone (stop, crash, race)."""

    job_id: int
    error: str
    requeued: bool = False


@dataclass(frozen=True)
class WorkerNotice:
    """Something worth a line in the log (orphans recovered, model (re)loaded, ...)."""

    message: str


# Progress: second-moment collection of an edited layer (done == 0 with a detail: a one-line advice)
@dataclass(frozen=True)
class SlotStep:
    """One v* step of one encoder slot, emitted for every slot of a multi-slot edit (SDXL, SD3, FLUX);
    the first slot's steps also arrive as plain StepEvents, as on a one-slot model."""

    slot: str
    event: StepEvent


WorkerEvent = JobStarted | StepEvent | SlotStep | JobFinished | JobFailed | WorkerNotice | Progress
EventCallback = Callable[[WorkerEvent], None]


@dataclass
class WorkerSummary:
    """What one `run` of the worker did."""

    done: int = 0
    failed: int = 0
    requeued: int = 0
    stopped: bool = False
    recovered_jobs: list[int] = field(default_factory=list)
    edit_ids: list[int] = field(default_factory=list)
    failures: dict[int, str] = field(default_factory=dict)
    lease_lost: str | None = None   # why this worker stopped without committing: its lease was taken over


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class WorkerConfig:
    """Where the worker reads and writes, and how it behaves."""

    db_path: Path
    root: Path                      # workspace root; delta paths are stored relative to it
    deltas_dir: Path
    stats_dir: Path
    device: str = "auto"
    max_jobs: int | None = None
    watch: bool = False             # keep polling for new jobs instead of exiting when idle
    poll_interval: float = 1.0
    heartbeat_interval: float = 2.0
    lease_stale_after: float = 30.0
    max_attempts: int = 5           # a job whose optimization/commit the worker died in this often is failed
    stats_corpus: Path | None = None
    stats_samples: int | None = None
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")


# loader(history_id) -> an object with .model (LoadedModel at the history's head), .head_seq (the head
# it was built for) and .base_encoder_hash (the base model's encoder hash), e.g. services.working_model.ModelState
ModelLoader = Callable[[int], object]
# after_edit(model, edit_row): e.g. text metrics; failures are logged, never fail the edit
AfterEdit = Callable[[object, object], None]


# ----------------------------------------------------------------------------- batch settings

# `--batch` without `--insert`/`--rounds`: joint, one round. Measured on real weights (all-MiniLM-L6-v2,
# benchmarks/scale.py, BENCHMARKS.md "Scale"), F1 / unrelated drift at N = 30 and 90: joint 0.954 / 0.138,
# 0.956 / 0.347; joint 2 rounds 0.958 / 0.142, 0.956 / 0.381 (3 rounds: 0.945 at 90); sequential
# --null-space 0.958 / 0.140, 0.958 / 0.430. The F1 gains are 1-2 probe flips (2 rounds: none at N = 90),
# the drift costs hold at every N, and the null space runs out past key width / 2 requests (768 on
# MiniLM), so the joint solve stays the default; summed rank-one updates are refused from N = 30.
DEFAULT_INSERT = "joint"
# solves of re-optimised v* for --insert joint/sequential when --rounds is not given; other modes solve once
DEFAULT_ROUNDS = 1
# `--batch` upper bound: far above any padded batch that fits a GPU, far below an integer that overflows.
MAX_BATCH = 4096
# `--lambda` upper bound (relative ridge, see engine.methods.refact.joint_solve); lambda_limit() may be lower.
MAX_LAMBDA = 1.0


def lambda_limit() -> float:
    """The largest accepted ``--lambda``: MAX_LAMBDA, or less where the batch guard's residual bound
    reaches 1, past which a request that ends no closer to its target would pass (an empty edit)."""
    if residual_bound(MAX_LAMBDA) < 1.0:
        return MAX_LAMBDA
    lo, hi = 0.0, MAX_LAMBDA
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if residual_bound(mid) < 1.0 else (lo, mid)
    return lo


@dataclass(frozen=True)
class BatchSettings:
    """`refact run --batch N [--insert MODE] [--layers ...] [--lambda X] [--null-space] [--rounds R]`.

    ``lam`` None: the default (DEFAULT_LAMBDA); ``--lambda`` and ``--null-space`` shape the joint,
    sequential and spread solves only, so a rank-one batch refuses them. ``rounds`` None: DEFAULT_ROUNDS
    for joint and sequential, 1 otherwise; more than 1 only for those two."""

    size: int
    insert: str = DEFAULT_INSERT
    layers: tuple[int, ...] = ()
    lam: float | None = None
    null_space: bool = False
    chunk: int | None = None  # requests per padded batch (memory cap); None = the engine's DEFAULT_CHUNK (32)
    rounds: int | None = None

    def validate(self) -> None:
        """HParamsError (one line) on any option that cannot work or would be ignored."""
        if not 1 <= self.size <= MAX_BATCH:
            raise HParamsError(f"--batch must be >= 1 and <= {MAX_BATCH}, got {self.size}; pass the number of jobs "
                               "to edit together")
        if self.insert not in MODES:
            raise HParamsError(f"--insert must be one of {', '.join(MODES)}, got {self.insert!r}")
        if self.layers and self.insert != "spread":
            raise HParamsError("--layers applies to --insert spread only; other modes edit the jobs' own layer")
        if len(set(self.layers)) != len(self.layers):
            raise HParamsError("--layers lists a layer twice; give each layer once")
        if self.insert == "rank-one" and (self.lam is not None or self.null_space):
            raise HParamsError("--lambda and --null-space shape the --insert joint/sequential/spread solves; a "
                               "rank-one batch would ignore them (add --insert joint, or drop them)")
        if self.rounds is not None:
            if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or not 1 <= self.rounds <= MAX_ROUNDS:
                raise HParamsError(f"--rounds must be an integer in 1..{MAX_ROUNDS}, got {self.rounds!r}")
            if self.rounds > 1 and self.insert not in ROUND_MODES:
                raise HParamsError(f"--rounds applies to --insert {' and '.join(ROUND_MODES)}; a {self.insert} batch "
                                   "solves once (drop --rounds)")
        if self.lam is not None:
            limit = lambda_limit()
            if not (math.isfinite(self.lam) and 0 <= self.lam <= limit):
                raise HParamsError(f"--lambda must be a finite number in 0..{limit:.3g}, got {self.lam}; larger values "
                                   "would accept a batch that leaves its requests where they were")
        if self.chunk is not None and self.chunk < 1:
            raise HParamsError(f"the batch chunk must be >= 1, got {self.chunk}")

    def insert_config(self) -> BatchInsertConfig:
        lam = DEFAULT_LAMBDA if self.lam is None else self.lam
        rounds = self.rounds if self.rounds is not None else DEFAULT_ROUNDS if self.insert in ROUND_MODES else 1
        return BatchInsertConfig(mode=self.insert, layers=tuple(self.layers), lam=lam, null_space=self.null_space,
                                 rounds=rounds)

    def check_layers(self, slots: dict) -> None:
        """``--layers`` against a base model's first encoder slot as `refact init` recorded it (``slots``:
        BaseModelRow.config["slots"]): every layer must reach the slot's readout, the range a single
        edit's --layer is held to. Runs before any job is claimed."""
        if not self.layers or not slots:
            return
        name, info = next(iter(slots.items()))
        low, high = info.get("editable", [0, int(info.get("num_layers", 1)) - 1])
        for layer in self.layers:
            if not low <= layer <= high:
                raise HParamsError(
                    f"--layers {layer} is out of range for {name} (editable: layers {low}..{high} of "
                    f"{info.get('num_layers')}; later layers cannot reach its {info.get('readout', 'final')} readout, "
                    "so their update would be zero); pick layers in that range"
                )
