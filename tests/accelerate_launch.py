"""Start ``accelerate launch`` with N CPU processes from a test (the one launcher every sharding test uses)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nothing listens on now (the process group's rendezvous port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher() -> str:
    """The venv's ``accelerate`` command; skips the test when it is not installed."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if accelerate is None:
        pytest.skip("accelerate launcher not installed")
    return accelerate


def launch(n: int, target: list[str], timeout: int = 400) -> subprocess.CompletedProcess:
    """Run ``target`` (a script and its arguments, or ``-m module ...``) under ``n`` accelerate CPU
    processes, offline and one thread each; skip when the launcher is not installed, fail on a non-zero
    exit. For n > 1, `--multi_gpu` takes the torchrun path even without a GPU (`--cpu` would start one
    process) and PartialState(cpu=True) joins the processes in a gloo group."""
    accelerate = launcher()
    port = str(free_port())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "ACCELERATE_DISABLE_RICH": "1", "MASTER_PORT": port, "PYTHONPATH": str(REPO)}
    mode = ["--multi_gpu"] if n > 1 else ["--cpu"]
    cmd = [accelerate, "launch", *mode, "--num_processes", str(n), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port, *target]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
