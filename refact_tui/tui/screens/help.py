"""Help screen: every key of every screen."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("Everywhere", (
        ("1 / 2 / 3 / 4 / 5", "Queue / Live / Metrics / History / Bench screen"),
        ("w", "start or stop the worker inside the TUI (or run `refact run` in another terminal)"),
        ("ctrl+p", "command palette: every action by name"),
        ("? / f1", "this help"),
        ("q", "quit (a worker started here is stopped between steps first)"),
    )),
    ("Queue", (
        ("a", "add an edit (form)"), ("i", "import a RoAD / TIMED CSV or JSONL file"),
        ("u / d", "move the selected queued job up / down"), ("c", "cancel the selected job"),
        ("r", "retry a failed or cancelled job (shows its error first)"),
    )),
    ("Live", (("c", "cancel the running edit"),)),
    ("Metrics", (
        ("t / T", "text-space evaluation of the latest edit / of every edit"),
        ("i / I", "image-space evaluation of the latest edit / of every edit"),
    )),
    ("History", (
        ("b", "roll back to the selected edit"), ("p", "replay the history's deltas into a new history"),
        ("o", "re-optimize every applied request into a new history"), ("f", "fork at the selected edit"),
        ("e", "export the edited pipeline"),
    )),
    ("Dialogs", (("y / n", "confirm / cancel"), ("ctrl+s / enter", "submit a form"), ("escape", "close"))),
)


def help_table() -> Table:
    t = Table(box=None, show_header=False, padding=(0, 2))
    t.add_column(style="bold cyan", no_wrap=True)
    t.add_column()
    for section, keys in KEYS:
        t.add_row(f"[bold]{section}[/bold]", "")
        for key, what in keys:
            t.add_row(f"  {key}", what)
    return t


class HelpScreen(ModalScreen[None]):
    """Every key; escape, q or ? closes it."""

    BINDINGS = [Binding("escape,q,question_mark,f1", "close", "Close")]

    def __init__(self) -> None:
        super().__init__(classes="modal")

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog wide", id="help-body"):
            yield Static("Keys  (escape closes this help)", classes="dialog-title")
            yield Static(help_table())

    def action_close(self) -> None:
        self.dismiss(None)
