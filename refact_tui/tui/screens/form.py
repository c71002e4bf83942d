"""Base of the input forms: escape cancels, enter or the submit button submits, errors stay in the form."""

from __future__ import annotations

from typing import TypeVar

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static

from refact_tui.services.display import plain

T = TypeVar("T")


class FormModal(ModalScreen[T]):
    """Subclasses compose their inputs, then ``yield from self.form_end(label)``, and define action_submit."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self) -> None:
        super().__init__(classes="modal")

    def form_end(self, submit_label: str) -> ComposeResult:
        """The error line and the submit / cancel buttons."""
        yield Static("", id="form-error", classes="form-error")
        with Horizontal(classes="dialog-buttons"):
            yield Button(submit_label, variant="primary", id="submit")
            yield Button("Close, queue nothing (esc)", id="cancel")

    def on_mount(self) -> None:
        inputs = list(self.query(Input))
        for inp in inputs:
            inp.cursor_blink = False  # a blinking cursor would make snapshots flaky
        if inputs:
            inputs[0].focus()

    def fail(self, reason: str) -> None:
        """Show why the form cannot be submitted (one line)."""
        self.query_one("#form-error", Static).update(plain(f"✗ {reason}"))

    def action_submit(self) -> None:
        raise NotImplementedError

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "submit":
            self.action_submit()
        else:
            self.dismiss(None)
