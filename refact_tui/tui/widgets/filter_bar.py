"""The one-line filter that `/` opens under a table (or the event log)."""

from __future__ import annotations

from textual.binding import Binding
from textual.message import Message
from textual.widgets import Input


class FilterBar(Input):
    """Typing filters at once; enter keeps the filter and returns to the table; escape clears it."""

    BINDINGS = [Binding("escape", "clear_filter", "Clear filter", show=False)]

    class Applied(Message):
        """The filter text changed (``done``: enter or escape was pressed)."""

        def __init__(self, text: str, done: bool) -> None:
            super().__init__()
            self.text = text
            self.done = done

    def __init__(self, value: str = "") -> None:
        super().__init__(value=value, placeholder="filter: words that every shown row contains",
                         id="filter-bar")

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.Applied(event.value, False))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.post_message(self.Applied(self.value, True))

    def action_clear_filter(self) -> None:
        self.value = ""
        self.post_message(self.Applied("", True))
