"""A PNG shown in the terminal as half-block pixels (two image rows per text row)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.widgets import Static


class HalfBlockImage:
    """Rich renderable: each cell is '▀' with the upper pixel as foreground, the lower as background."""

    def __init__(self, image, max_width: int = 60, max_rows: int = 16) -> None:
        from PIL import Image

        img = image.convert("RGB")
        scale = min(max_width / img.width, (2 * max_rows) / img.height, 1.0)
        w = max(1, round(img.width * scale))
        h = max(2, round(img.height * scale))
        h += h % 2
        self.image = img.resize((w, h), Image.Resampling.BOX)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        img = self.image
        px = img.load()
        for y in range(0, img.height, 2):
            for x in range(img.width):
                top, bottom = px[x, y], px[x, y + 1]
                yield Segment("▀", Style(color=f"rgb{top}", bgcolor=f"rgb{bottom}"))
            yield Segment.line()


class ImagePreview(Static):
    """Shows an image file, or a one-line note when there is none or it cannot be read."""

    def show(self, path: Path | None, max_width: int = 60, max_rows: int = 14) -> None:
        if path is None:
            self.update(Text("no before/after grid recorded for this edit (run an image evaluation)", style="dim"))
            return
        try:
            from PIL import Image

            with Image.open(path) as img:
                self.update(HalfBlockImage(img, max_width, max_rows))
        except (OSError, ValueError) as exc:
            self.update(Text(f"cannot show {path.name}: {exc}", style="red"))
