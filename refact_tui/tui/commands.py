"""Command palette entries for every action of the TUI."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from textual.command import DiscoveryHit, Hit, Hits, Provider

if TYPE_CHECKING:
    from refact_tui.tui.app import RefactApp

# (palette text, help, mode to switch to first or None, action string run on that screen or the app)
COMMANDS: tuple[tuple[str, str, str | None, str], ...] = (
    ("Show queue", "Jobs waiting, running or failed", None, "app.switch_mode('queue')"),
    ("Show live edit", "Loss and P(target) of the edit being optimized", None, "app.switch_mode('live')"),
    ("Show metrics", "Efficacy, generality, specificity, F1, retention, CLIP score", None,
     "app.switch_mode('metrics')"),
    ("Show history", "The edit log with rollback, replay, fork and export", None, "app.switch_mode('history')"),
    ("Start / stop worker", "Run the queue inside the TUI", None, "app.toggle_worker"),
    ("Add edit", "Queue one edit request (form)", "queue", "add"),
    ("Import edits from file", "RoAD / TIMED CSV or JSONL", "queue", "import_file"),
    ("Move job up", "Earlier in the queue", "queue", "move(-1)"),
    ("Move job down", "Later in the queue", "queue", "move(1)"),
    ("Cancel job", "Cancel the selected queued or running job", "queue", "cancel_job"),
    ("Retry job", "Put a failed or cancelled job back in the queue", "queue", "retry_job"),
    ("Cancel running edit", "Stop the edit being optimized", "live", "cancel_running"),
    ("Text evaluation", "Text-space metrics of the latest edit", "metrics", "evaluate('text', False)"),
    ("Text evaluation of every edit", "Text-space metrics of each applied edit", "metrics",
     "evaluate('text', True)"),
    ("Image evaluation", "Image-space metrics of the latest edit", "metrics", "evaluate('image', False)"),
    ("Image evaluation of every edit", "Image-space metrics of each applied edit", "metrics",
     "evaluate('image', True)"),
    ("Rollback to selected edit", "Later edits are marked rolled back", "history", "rollback"),
    ("Replay history", "Re-apply the stored deltas into a new history", "history", "replay"),
    ("Re-optimize history", "Queue every applied request again in a new history", "history", "reoptimize"),
    ("Fork at selected edit", "New history from the selected edit", "history", "fork"),
    ("Export edited pipeline", "save_pretrained of base + applied edits", "history", "export"),
    ("Help", "Every key", None, "app.show_help"),
)


class RefactCommands(Provider):
    """Every TUI action by name (ctrl+p)."""

    @property
    def refact(self) -> "RefactApp":
        return self.app  # type: ignore[return-value]

    def _run(self, mode: str | None, action: str) -> None:
        self.refact.run_command(mode, action)

    async def discover(self) -> Hits:
        for text, help_text, mode, action in COMMANDS:
            yield DiscoveryHit(text, partial(self._run, mode, action), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for text, help_text, mode, action in COMMANDS:
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), partial(self._run, mode, action), text=text, help=help_text)
