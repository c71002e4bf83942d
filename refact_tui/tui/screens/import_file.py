"""Dialog that asks for a file of edit requests to import into the queue."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Checkbox, Input, Label, Select, Static

from refact_tui.tui.screens.form import FormModal

FORMATS = ("auto", "road", "timed", "csv", "jsonl", "json")


@dataclass(frozen=True)
class ImportChoice:
    path: Path
    format: str
    skip_invalid: bool


class ImportFileModal(FormModal[ImportChoice | None]):
    """Path, format and whether to skip invalid rows; checks that the file exists."""

    def __init__(self, start_dir: Path | None = None) -> None:
        super().__init__()
        self.start_dir = start_dir or Path.cwd()

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Static("Import edit requests", classes="dialog-title")
            yield Label("File (RoAD CSV, TIMED CSV or JSONL)")
            yield Input(placeholder="path/to/edits.csv", id="import-path")
            with Horizontal(classes="form-row"):
                yield Select([(f, f) for f in FORMATS], value="auto", allow_blank=False, id="import-format")
                yield Checkbox("skip invalid rows", id="import-skip")
            yield from self.form_end("Import")

    def action_submit(self) -> None:
        raw = self.query_one("#import-path", Input).value.strip()
        if not raw:
            self.fail("enter the path of the file to import")
            return
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = self.start_dir / path
        if not path.is_file():
            self.fail(f"no file at {path}; check the path")
            return
        fmt = str(self.query_one("#import-format", Select).value)
        skip = self.query_one("#import-skip", Checkbox).value
        self.dismiss(ImportChoice(path, fmt, skip))
