"""Open a file in the system's viewer (the desktop's default application for its type)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def open_in_viewer(path: Path) -> str | None:
    """Start the viewer without waiting for it; returns None, or one line saying why it cannot."""
    if sys.platform == "win32":
        os.startfile(path)  # type: ignore[attr-defined]  # noqa: S606 - the user's own file
        return None
    opener = "open" if sys.platform == "darwin" else "xdg-open"
    if shutil.which(opener) is None:
        return f"no `{opener}` on this system; the grid is at {path}"
    subprocess.Popen([opener, str(path)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)
    return None
