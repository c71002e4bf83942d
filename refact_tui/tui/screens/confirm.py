"""Yes/no confirmation that states exactly what an action will do."""

from __future__ import annotations

from textual.binding import Binding
from textual.widgets import Button

from refact_tui.tui.screens.dialog import Dialog


class ConfirmModal(Dialog[bool]):
    """Dismisses with True on confirm, False on cancel (y / n / escape)."""

    BINDINGS = [
        Binding("y", "choose(True)", "Yes"),
        Binding("n,escape", "choose(False)", "No"),
    ]
    body_id = "confirm-body"

    def __init__(self, title: str, body: str, confirm_label: str = "Yes, do it", keep_label: str = "Keep") -> None:
        super().__init__(title, body)
        self.confirm_label = confirm_label
        self.keep_label = keep_label

    def buttons(self) -> list[Button]:
        return [Button(f"{self.confirm_label} (y)", variant="warning", id="yes"),
                Button(f"{self.keep_label} (n)", id="no")]

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_choose(self, value: bool) -> None:
        self.dismiss(value)
