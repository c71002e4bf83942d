"""Form for one edit request (and the two hyperparameters people change most)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical
from textual.widgets import Input, Label, Static

from engine.methods.refact.hparams import HParamsError, ReFACTHParams
from engine.request import EditRequest, RequestError
from refact_tui.tui.screens.form import FormModal

FIELDS = (
    ("prompt", "Prompt", "The Prince of Wales"),
    ("subject", "Subject (optional)", "defaults to the whole prompt"),
    ("source", "Source", "Prince Charles"),
    ("target", "Target", "Prince William"),
    ("contrastive", "Contrastive (optional)", "comma-separated texts to push away"),
    ("name", "Name (optional)", "a short label"),
    ("layer", "Layer", "workspace default"),
    ("max_steps", "Max steps", str(ReFACTHParams().max_steps)),
)


@dataclass(frozen=True)
class NewEdit:
    """What the form returns: a validated request and hyperparameter overrides
    (applied onto the workspace default by the queue service)."""

    request: EditRequest
    hparams: dict[str, int]


def parse_form(values: dict[str, str]) -> NewEdit:
    """Build and validate the request; RequestError / HParamsError name the bad field."""
    contrastive = tuple(c.strip() for c in values.get("contrastive", "").split(",") if c.strip())
    request = EditRequest(
        prompt=values.get("prompt", ""), source=values.get("source", ""), target=values.get("target", ""),
        subject=values.get("subject") or None, contrastive=contrastive, name=values.get("name") or None,
    )
    request.validate()
    overrides = {}
    for key in ("layer", "max_steps"):
        raw = values.get(key, "").strip()
        if raw:
            try:
                overrides[key] = int(raw)
            except ValueError:
                raise HParamsError(f"{key} must be a whole number, got {raw!r}") from None
    ReFACTHParams().with_overrides(**overrides)  # range checks now; the layer is checked by the service
    return NewEdit(request, overrides)


class AddEditModal(FormModal[NewEdit | None]):
    """Dismisses with a NewEdit, or None when cancelled. Errors stay in the form, on one line."""

    BINDINGS = [Binding("ctrl+s", "submit", "Queue it")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Static("Queue an edit", classes="dialog-title")
            with Grid(id="edit-form"):
                for key, label, placeholder in FIELDS:
                    yield Label(label)
                    yield Input(placeholder=placeholder, id=f"f-{key}")
            yield from self.form_end("Queue (ctrl+s)")

    def values(self) -> dict[str, str]:
        return {key: self.query_one(f"#f-{key}", Input).value for key, _, _ in FIELDS}

    def action_submit(self) -> None:
        try:
            result = parse_form(self.values())
        except (RequestError, HParamsError) as exc:
            self.fail(str(exc))
            return
        self.dismiss(result)
