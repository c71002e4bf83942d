"""Hyperparameters of an edit as a compact key/value block."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from engine.methods.refact.hparams import DEFAULT_TEMPLATES, ReFACTHParams
from refact_tui.services.display import plain


def hparams_table(hp: ReFACTHParams | None) -> Table | Text:
    if hp is None:
        return Text("-", style="dim")
    t = Table.grid(padding=(0, 1))
    t.add_column(style="bold")
    t.add_column()
    for key, value in hp.to_dict().items():
        if key == "templates":
            value = "paper's 9" if tuple(hp.templates) == DEFAULT_TEMPLATES else f"{len(hp.templates)} custom"
        t.add_row(key, plain(value))
    return t


class HParamsView(Static):
    """The hyperparameters the current edit runs with."""

    def show(self, hp: ReFACTHParams | None) -> None:
        self.update(hparams_table(hp))
