"""Help screen: every key, the current screen's first (built from the key table)."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from refact_tui.tui.keys import APP_KEYS, SCREEN_KEYS, Key

Section = tuple[str, tuple[tuple[str, str], ...]]
TITLES = {"queue": "Queue", "live": "Live", "metrics": "Metrics", "history": "History", "bench": "Bench"}


def _label(keys: str) -> str:
    # Key names as the help lists them ("slash" is drawn as "/" by help_table).
    names = {"question_mark": "?"}
    return " / ".join(names.get(k, k) for k in keys.split(","))


def _rows(keys: tuple[Key, ...]) -> tuple[tuple[str, str], ...]:
    return tuple((_label(k.keys), f"{k.palette}: {k.about}") for k in keys)


EVERYWHERE: Section = ("Everywhere", (
    ("1 / 2 / 3 / 4 / 5", "Queue / Live / Metrics / History / Bench screen"),
    *_rows(tuple(k for k in APP_KEYS if not k.keys.isdigit())),
    ("ctrl+p", "command palette: every action by name, with its key"),
))
TABLES: Section = ("Tables", (
    ("up / down / j / k", "previous / next row"), ("home / g", "first row"), ("end / G", "last row"),
    ("pageup / pagedown", "a page up / down"), ("tab", "next table or panel"),
))
DIALOGS: Section = ("Dialogs", (("y / n", "confirm / keep things as they are"),
                                ("ctrl+s / enter", "submit a form"), ("escape", "close")))
SCREENS: tuple[Section, ...] = tuple((TITLES[mode], _rows(keys)) for mode, keys in SCREEN_KEYS.items())
KEYS: tuple[Section, ...] = (EVERYWHERE, *SCREENS, TABLES, DIALOGS)


def sections_for(mode: str | None) -> tuple[Section, ...]:
    """Every section, the one of screen ``mode`` first."""
    title = TITLES.get(mode or "")
    first = tuple(s for s in KEYS if s[0] == title)
    return first + tuple(s for s in KEYS if s[0] != title)


def help_table(mode: str | None = None) -> Table:
    t = Table(box=None, show_header=False, padding=(0, 2))
    t.add_column(style="bold cyan", no_wrap=True)
    t.add_column()
    for i, (section, keys) in enumerate(sections_for(mode)):
        here = " (this screen)" if i == 0 and section == TITLES.get(mode or "") else ""
        t.add_row(f"[bold]{section}{here}[/bold]", "")
        for key, what in keys:
            t.add_row("  " + " / ".join("/" if k == "slash" else k for k in key.split(" / ")), what)
    return t


class HelpScreen(ModalScreen[None]):
    """Every key, the current screen's first; escape, q or ? closes it."""

    BINDINGS = [Binding("escape,q,question_mark,f1", "close", "Close")]

    def __init__(self, mode: str | None = None) -> None:
        super().__init__(classes="modal")
        self.mode = mode

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog wide", id="help-body"):
            yield Static("Keys  (escape closes this help)", classes="dialog-title")
            yield Static(help_table(self.mode))

    def action_close(self) -> None:
        self.dismiss(None)
