"""Base of the small modal dialogs: a title, a one-paragraph body and a row of buttons."""

from __future__ import annotations

from typing import TypeVar

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from refact_tui.services.display import plain

T = TypeVar("T")


class Dialog(ModalScreen[T]):
    """Subclasses give the buttons; ``body_id`` names the body Static (tests and CSS use it)."""

    body_id = "dialog-body"

    def __init__(self, title: str, body: str, classes: str = "modal") -> None:
        super().__init__(classes=classes)
        self.title_text = title
        self.body = body

    def buttons(self) -> list[Button]:
        raise NotImplementedError

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(plain(self.title_text), classes="dialog-title")
            yield Static(plain(self.body, multiline=True), id=self.body_id, classes="dialog-body")
            with Horizontal(classes="dialog-buttons"):
                yield from self.buttons()
