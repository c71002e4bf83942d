"""Messages posted from thread workers to the UI thread."""

from __future__ import annotations

from textual.message import Message


class StoreNudge(Message):
    """A worker thread wrote to the store (step, progress, result): poll now.

    Only the newest pending nudge matters, so queued ones are replaced (coalescing high-rate
    step callbacks into at most one refresh per UI tick).
    """

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, StoreNudge)


class ActionDone(Message):
    """A service call finished; ``summary`` is the one line shown as a notification."""

    def __init__(self, summary: str) -> None:
        super().__init__()
        self.summary = summary
