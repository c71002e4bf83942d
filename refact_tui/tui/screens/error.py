"""An error shown as one clear line; the app keeps running underneath."""

from __future__ import annotations

from textual.binding import Binding
from textual.widgets import Button

from refact_tui.tui.screens.dialog import Dialog


class ErrorModal(Dialog[None]):
    """Names what failed and the one-line reason; enter / escape closes it."""

    BINDINGS = [Binding("escape,enter", "close", "Close")]
    body_id = "error-message"

    def __init__(self, title: str, message: str) -> None:
        super().__init__(title, message, classes="modal error-modal")

    @property
    def message(self) -> str:
        return self.body

    def buttons(self) -> list[Button]:
        return [Button("Close", variant="error", id="close")]

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)
