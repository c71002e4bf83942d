"""Stacking edit deltas into LoRA factors, and which loader can reach each matrix.

An edit's update of one matrix is W += left @ right.T (``engine.delta.MatrixUpdate``), a LoRA with
up = left and down = right.T. N edits of one matrix stack into one rank-sum LoRA whose columns are the
edits' columns side by side; ``EditColumns`` records which columns are whose, so an export can be split
back into the exact deltas it came from.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

from engine.delta import EditDelta, MatrixUpdate
from engine.errors import EngineError

STACKED_NAME = "refact"
# the module names diffusers' text-encoder LoRA loader infers a rank for (peft_utils.get_peft_kwargs)
TEXT_LORA_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
TEXT_PREFIX = "text_encoder"


class ExportFormat(str, enum.Enum):
    """What ``refact export`` writes."""

    MERGED = "merged"   # a full save_pretrained folder
    DELTAS = "deltas"   # the delta files + manifest.json
    LORA = "lora"       # diffusers LoRA (+ PEFT folders for what diffusers cannot reach)
    KOHYA = "kohya"     # kohya / sd-scripts keys (ComfyUI, A1111)
    PEFT = "peft"       # one PEFT adapter folder per text encoder

    @classmethod
    def parse(cls, text: str) -> "ExportFormat":
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise EngineError(f"unknown --format {text!r}; choose one of "
                              f"{', '.join(f.value for f in cls)}") from None

    @property
    def is_adapter(self) -> bool:
        return self in (ExportFormat.LORA, ExportFormat.KOHYA, ExportFormat.PEFT)


@dataclass(frozen=True)
class EditColumns:
    """Columns [start, stop) of a stacked matrix that hold edit ``seq``'s update."""

    seq: int
    start: int
    stop: int


@dataclass
class AdapterMatrix:
    """W += up @ down for ``module`` of ``component``: up (out, k), down (k, in), float32 on CPU."""

    component: str
    module: str
    up: torch.Tensor
    down: torch.Tensor
    layer: int | None = None
    columns: list[EditColumns] = field(default_factory=list)

    @property
    def rank(self) -> int:
        return int(self.up.shape[1])

    def update(self, start: int = 0, stop: int | None = None) -> MatrixUpdate:
        """Columns [start, stop) as a delta update (all columns by default)."""
        stop = self.rank if stop is None else stop
        return MatrixUpdate(self.component, self.module, self.up[:, start:stop].clone(),
                            self.down[start:stop, :].T.clone(), self.layer)


@dataclass
class Adapter:
    """One named adapter: the matrices it changes (one per (component, module))."""

    name: str
    matrices: list[AdapterMatrix]

    @property
    def components(self) -> list[str]:
        return list(dict.fromkeys(m.component for m in self.matrices))

    def only(self, keep) -> "Adapter":
        """The same adapter with just the matrices ``keep(matrix)`` accepts."""
        return Adapter(self.name, [m for m in self.matrices if keep(m)])


def stack(name: str, edits: Iterable[tuple[int, EditDelta]]) -> Adapter:
    """One adapter holding every update of ``edits`` ((seq, delta) in history order), matrices of the
    same (component, module) stacked column-wise in edit order."""
    by_matrix: dict[tuple[str, str], list[tuple[int, MatrixUpdate]]] = {}
    for seq, delta in edits:
        for u in delta.updates:
            by_matrix.setdefault((u.component, u.module), []).append((seq, u))
    matrices = []
    for (component, module), parts in by_matrix.items():
        columns, start = [], 0
        for seq, u in parts:
            columns.append(EditColumns(seq, start, start + u.rank))
            start += u.rank
        up = torch.cat([u.left for _, u in parts], dim=1)
        down = torch.cat([u.right for _, u in parts], dim=1).T
        matrices.append(AdapterMatrix(component, module, up.contiguous(), down.contiguous(), parts[0][1].layer, columns))
    return Adapter(name, matrices)


def per_edit_name(seq: int) -> str:
    return f"edit-{seq}"


def adapters_for(edits: Sequence[tuple[int, EditDelta]], per_edit: bool) -> list[Adapter]:
    """The default single stacked adapter, or one ``edit-<seq>`` adapter per edit (a batch edit is one
    adapter of its rank)."""
    if per_edit:
        return [stack(per_edit_name(seq), [(seq, d)]) for seq, d in edits]
    return [stack(STACKED_NAME, edits)]


def is_text_component(component: str) -> bool:
    return component.startswith(TEXT_PREFIX)


def diffusers_reaches(matrix: AdapterMatrix, loadable: Sequence[str]) -> bool:
    """Whether the pipeline's diffusers LoRA loader (its ``_lora_loadable_modules``) can load this matrix:
    a text encoder it loads, on a module whose rank it can infer (CLIP's fc2, not T5's wo or an LLM's
    down_proj), or a denoiser component (UNet / transformer, any Linear)."""
    if matrix.component not in loadable:
        return False
    if is_text_component(matrix.component):
        return matrix.module.rsplit(".", 1)[-1] in TEXT_LORA_MODULES
    return True


def deltas_of(adapters: Sequence[Adapter], seqs: Sequence[int]) -> dict[int, EditDelta]:
    """Split adapters back into one EditDelta per edit seq, from their recorded columns (exact: the
    same float32 values the deltas held)."""
    updates: dict[int, list[MatrixUpdate]] = {s: [] for s in seqs}
    for adapter in adapters:
        for m in adapter.matrices:
            for c in m.columns:
                if c.seq not in updates:
                    raise EngineError(f"adapter {adapter.name!r} holds columns of edit {c.seq}, which it does not list")
                updates[c.seq].append(m.update(c.start, c.stop))
    return {s: EditDelta(updates=u) for s, u in updates.items()}
