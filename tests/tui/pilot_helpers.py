"""Pilot helpers shared by the TUI tests: the app on the sample workspace, opened and drawn once."""

from __future__ import annotations

from contextlib import asynccontextmanager

from refact_tui.tui.app import RefactApp

SIZE = (120, 40)


def make_app(root, S) -> RefactApp:
    return RefactApp(root, clock=lambda: S.NOW, poll_interval=0.05)


def text_of(widget) -> str:
    """The plain text a Static currently shows (tables and Text alike)."""
    import io

    from rich.console import Console

    console = Console(width=200, file=io.StringIO(), record=True)
    console.print(widget.content)
    return console.export_text()


@asynccontextmanager
async def opened(app: RefactApp, size: tuple[int, int] = SIZE):
    """Run ``app`` in a test terminal until its first store read (a reader thread) is drawn."""
    async with app.run_test(size=size) as pilot:
        await pilot.pause(0.1)
        await app.settled()
        yield pilot
