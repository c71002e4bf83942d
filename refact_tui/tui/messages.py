"""Messages posted from thread workers to the UI thread."""

from __future__ import annotations

from typing import Any, Callable

from textual.message import Message


class StoreNudge(Message):
    """A worker thread wrote to the store (step, progress, result): poll now.

    Only the newest pending nudge matters, so queued ones are replaced (coalescing high-rate
    step callbacks into at most one refresh per UI tick).
    """

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, StoreNudge)


class ActionDone(Message):
    """A service call finished; ``summary`` is the one line shown as a notification, unless
    ``on_result`` takes the result instead (called on the UI thread)."""

    def __init__(self, summary: str, result: Any = None, on_result: Callable[[Any], None] | None = None) -> None:
        super().__init__()
        self.summary = summary
        self.result = result
        self.on_result = on_result
