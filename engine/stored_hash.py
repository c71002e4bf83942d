"""The hash of a model's stored weight files: an identity of the base that does not depend on the dtype
it is loaded in (an in-memory hash of a bf16 load differs from the fp32 one of the same files)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

CHUNK = 1 << 22


def stored_files_hash(folder: Path | str, components: Iterable[str] | None = None) -> str:
    """sha256 over (relative path, bytes) of every ``*.safetensors`` file of ``components`` (subfolders
    of a pipeline folder) or, for None, of the whole folder, in sorted path order."""
    root = Path(folder)
    roots = [root / c for c in components] if components is not None else [root]
    files = sorted({f for r in roots for f in r.rglob("*.safetensors") if f.is_file()})
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(root).as_posix()}\0{f.stat().st_size}\0".encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(CHUNK):
                h.update(chunk)
    return h.hexdigest()
