"""A PNG shown in the terminal through textual-image: Kitty graphics or Sixel where the terminal has
them, unicode blocks otherwise (the library's own detection, run once at import, before the app starts)."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static
from textual_image.widget import Image

GRID_ROWS = 16  # terminal rows of the before/after grid: readable, and the metrics still follow on screen


class ImagePreview(Vertical):
    """An image file with a one-line note above it (its path, or why there is nothing to show)."""

    DEFAULT_CSS = f"""
    ImagePreview {{ height: auto; }}
    ImagePreview #preview-image {{ height: {GRID_ROWS}; width: auto; }}
    ImagePreview.-empty #preview-image {{ display: none; }}
    """

    def compose(self) -> ComposeResult:
        yield Static(id="preview-note")
        yield Image(id="preview-image")

    @property
    def path(self) -> Path | None:
        return self._path

    _path: Path | None = None

    def show(self, path: Path | None, label: str | None = None) -> None:
        note = self.query_one("#preview-note", Static)
        image = self.query_one("#preview-image", Image)
        self._path = None
        if path is None:
            image.image = None
            self.add_class("-empty")
            note.update(Text("no before/after grid recorded for this edit (image evaluation: i on the Metrics "
                             "screen)", style="dim"))
            return
        try:
            image.image = path
        except (OSError, ValueError) as exc:
            image.image = None
            self.add_class("-empty")
            note.update(Text(f"cannot show {path.name}: {exc}", style="red"))
            return
        self._path = path
        self.remove_class("-empty")
        note.update(Text(f"before/after grid: {label or path.name}  (O opens it in the system viewer)",
                         style="dim"))
