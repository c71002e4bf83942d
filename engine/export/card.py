"""The model card (README.md) every export carries: what base it is for, which edits it holds, and the
exact lines that load it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CardEdit:
    """One edit as the card lists it."""

    seq: int
    prompt: str
    source: str
    target: str
    method: str
    slots: str                       # "text_encoder" / "text_encoder, text_encoder_2" / "unet"
    layer: str                       # "2", "-" for a UNet method, or per slot
    hparams: dict
    metrics: dict[str, float] = field(default_factory=dict)
    requests: int = 1                # a batch edit holds several requests


@dataclass(frozen=True)
class Snippet:
    """Lines that load the export in one tool."""

    tool: str
    language: str
    code: str


@dataclass(frozen=True)
class ModelCard:
    title: str
    export_format: str
    base_source: str
    base_hash: str
    history: str
    manifest_file: str
    manifest_hash: str
    weights_hash: str
    edits: list[CardEdit]
    snippets: list[Snippet]
    notes: list[str] = field(default_factory=list)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(card: ModelCard) -> str:
    """Markdown of the card."""
    lines = [
        f"# {card.title}", "",
        f"Edited with refact-tui (ReFACT fact edits). Format: **{card.export_format}**.", "",
        f"- Base model: `{card.base_source}`",
        f"- Base hash: `{card.base_hash}`",
        f"- History: `{card.history}`, {len(card.edits)} edit(s)",
        f"- Weights hash after the edits: `{card.weights_hash}`",
        f"- Manifest: `{card.manifest_file}` (sha256 `{card.manifest_hash}`)", "",
    ]
    lines += [f"> {n}" for n in card.notes] + ([""] if card.notes else [])
    lines += ["## Edits", "", "| seq | prompt | source -> target | method | slot | layer | hparams | metrics |",
              "|---|---|---|---|---|---|---|---|"]
    for e in card.edits:
        shown = {k: (f"<{len(v)} items>" if isinstance(v, list) and len(v) > 3 else v) for k, v in e.hparams.items()}
        hp = json.dumps(shown, sort_keys=True, separators=(",", ":"))
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(e.metrics.items())) or "not evaluated"
        prompt = e.prompt + (f" (+{e.requests - 1} more in this batch)" if e.requests > 1 else "")
        lines.append(f"| {e.seq} | {_cell(prompt)} | {_cell(e.source)} -> {_cell(e.target)} | {e.method} | "
                     f"{e.slots} | {e.layer} | `{_cell(hp)}` | {_cell(metrics)} |")
    lines += ["", "## Loading", ""]
    for s in card.snippets:
        lines += [f"### {s.tool}", "", f"```{s.language}", s.code.rstrip(), "```", ""]
    return "\n".join(lines).rstrip() + "\n"
