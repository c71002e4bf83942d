"""What the queue worker reports and how it is configured: its event types, summary and settings.

Split from ``services.worker`` so the CLI and the TUI can name the events without the worker loop.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from engine.events import Progress, StepEvent


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
# it was built for) and .base_encoder_hash (the base model's encoder hash), e.g. services.state.ModelState
ModelLoader = Callable[[int], object]
# after_edit(model, edit_row): e.g. text metrics; failures are logged, never fail the edit
AfterEdit = Callable[[object, object], None]
