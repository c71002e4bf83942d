"""Command palette entries for every action of the TUI (built from the key table)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from refact_tui.tui.api import AppAPI
from refact_tui.tui.keys import APP_KEYS, SCREEN_KEYS, key_label


@dataclass(frozen=True)
class Command:
    """A palette entry: switch to ``mode`` first (None: stay), then run ``action`` ('app.' = on the app)."""

    text: str
    about: str
    mode: str | None
    action: str
    key: str = ""  # the key that runs it on its screen, as a person reads it

    @property
    def help(self) -> str:
        return f"key {self.key} · {self.about}" if self.key else self.about


COMMANDS: tuple[Command, ...] = (
    *(Command(k.palette, k.about, None, f"app.{k.action}", key_label(k.keys)) for k in APP_KEYS
      if k.action != "quit"),
    *(Command(k.palette, k.about, mode, k.action, key_label(k.keys)) for mode, keys in SCREEN_KEYS.items()
      for k in keys),
)


class RefactCommands(Provider):
    """Every TUI action by name (ctrl+p)."""

    def _run(self, command: Command) -> None:
        app: AppAPI = self.app  # type: ignore[assignment]
        app.run_command(command.mode, command.action)

    async def discover(self) -> Hits:
        for c in COMMANDS:
            yield DiscoveryHit(c.text, partial(self._run, c), help=c.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for c in COMMANDS:
            score = matcher.match(c.text)
            if score > 0:
                yield Hit(score, matcher.highlight(c.text), partial(self._run, c), text=c.text, help=c.help)
