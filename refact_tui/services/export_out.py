"""Where an export goes: the result record, and a staging folder that becomes the output folder only
when the export completes (a refused or failed export leaves nothing behind)."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from engine.errors import EngineError


@dataclass
class ExportResult:
    """Where an export went and what it holds."""

    out: Path
    kind: str                       # "pipeline" | "text-encoder" | "deltas" | "lora" | "kohya" | "peft"
    n_edits: int
    base_encoder_hash: str
    weights_hash: str               # encoder hash of the exported (edited) model
    manifest: Path | None = None
    files: list[Path] = field(default_factory=list)
    weights_hashes: dict[str, str] = field(default_factory=dict)  # encoder slot -> hash, exported model
    notes: list[str] = field(default_factory=list)                # one line each, for the user


def check_out(out: Path) -> Path:
    """``out`` as an absolute path; EngineError if it exists and is not an empty folder."""
    out = Path(out).expanduser().absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EngineError(f"{out} already exists and is not an empty folder; pick a new output folder")
    return out


@contextmanager
def staged_folder(out: Path) -> Iterator[tuple[Path, Path]]:
    """(staging folder, final path): write into the staging folder beside ``out``; it becomes ``out``
    only when the block succeeds, so a failed export leaves nothing behind."""
    final = check_out(out)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield stage, final
        if final.exists():
            final.rmdir()  # an empty folder the user made for it
        os.replace(stage, final)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
