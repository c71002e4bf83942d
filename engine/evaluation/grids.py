"""Before/after image grids (unedited vs edited, same seeds) saved as PNG."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

LABEL_W = 96


def image_grid(rows: Sequence[Sequence[Image.Image]], row_labels: Sequence[str] = ()) -> Image.Image:
    """Rows of equally sized images side by side, with an optional label column on the left."""
    if not rows or not rows[0]:
        raise ValueError("a grid needs at least one image")
    w, h = rows[0][0].size
    cols = max(len(r) for r in rows)
    pad = LABEL_W if row_labels else 0
    grid = Image.new("RGB", (pad + cols * w, len(rows) * h), "white")
    draw = ImageDraw.Draw(grid)
    for r, images in enumerate(rows):
        if row_labels:
            draw.text((4, r * h + 4), str(row_labels[r])[:14], fill="black")
        for c, im in enumerate(images):
            grid.paste(im.convert("RGB").resize((w, h)), (pad + c * w, r * h))
    return grid


def save_png(image: Image.Image, path: Path) -> tuple[str, int]:
    """Write atomically (tmp + rename); returns (sha256, bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    image.save(tmp, format="PNG")
    data = tmp.read_bytes()
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest(), len(data)


def before_after_grid(before: Sequence[Image.Image], after: Sequence[Image.Image], path: Path) -> tuple[str, int]:
    """Save the two-row grid (top: unedited, bottom: edited, same seeds per column)."""
    return save_png(image_grid([list(before), list(after)], ["unedited", "edited"]), path)
