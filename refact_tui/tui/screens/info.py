"""A read-only modal: a title and one rich renderable (tables, comparisons); escape closes it."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from refact_tui.services.display import plain


class InfoModal(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,enter", "close", "Close")]

    def __init__(self, title: str, body: Any) -> None:
        super().__init__(classes="modal")
        self.title_text = title
        self.body = body

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog wide", id="info-body"):
            yield Static(plain(self.title_text), classes="dialog-title")
            yield Static(self.body, id="info-content")
            yield Static(plain("escape closes this"), classes="dim")

    def action_close(self) -> None:
        self.dismiss(None)
