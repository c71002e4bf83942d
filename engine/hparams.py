"""Hyperparameters of a ReFACT edit.

Defaults are the configuration that produced the paper's RoAD numbers (layer 7, lr 0.05, at most
100 evaluations, threshold 0.99, weight decay 0.1 in the ||delta|| / ||v0||^2 form, clamp 4 * ||v0||,
plain L2 distances). The reference README's ``--v_weight_decay 0.01`` never reached its code (B2),
so 0.1 is what really ran.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping

# The paper's nine context templates, in the reference's order. The bare prompt "{}" is always
# evaluated first during the v* optimization and is not part of this list.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "{} in a realistic style portrait image",
    "{}, a portrait",
    "realistic painting of {}",
    "a current image of {}",
    "{}, news image",
    "a beautiful photograph of {}",
    "realistic drawing of {}",
    "{}, realistic portrait",
    "{} in a photo",
)

SIMILARITIES = ("l2", "cosine")


class HParamsError(ValueError):
    """A hyperparameter value is out of range."""


@dataclass(frozen=True)
class ReFACTHParams:
    """Everything that controls one edit; stored with every edit so it can be reproduced."""

    layer: int = 7
    lr: float = 0.05
    max_steps: int = 100
    prob_threshold: float = 0.99
    weight_decay: float = 0.1
    clamp_factor: float = 4.0
    similarity: str = "l2"
    # Divides the similarity scores before the softmax; for encoders with normalized features.
    temperature: float = 1.0
    templates: tuple[str, ...] = field(default=DEFAULT_TEMPLATES)
    # Added to the diagonal of C (scaled by its mean diagonal) before the Cholesky solve.
    ridge: float = 0.0
    # |k_e . u| below this refuses the insertion: r would blow up.
    min_division: float = 1e-8
    # Sequential-editing extension (0 = the paper's ReFACT): each earlier edit's key k* of the same
    # layer is added to C with this weight, C' = C + preserve * sum_i k_i k_i^T, so u = C'^-1 k*
    # barely moves the keys of earlier edits and later edits disturb them less.
    preserve: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "templates", tuple(self.templates))
        self.validate()

    def validate(self) -> None:
        """Raise HParamsError naming the first bad value."""
        if self.layer < 0:
            raise HParamsError(f"layer must be >= 0, got {self.layer}")
        if not self.lr > 0:
            raise HParamsError(f"lr must be > 0, got {self.lr}")
        if self.max_steps < 1:
            raise HParamsError(f"max_steps must be >= 1, got {self.max_steps}")
        if not 0.0 < self.prob_threshold <= 1.0:
            raise HParamsError(f"prob_threshold must be in (0, 1], got {self.prob_threshold}")
        if self.weight_decay < 0:
            raise HParamsError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not self.clamp_factor > 0:
            raise HParamsError(f"clamp_factor must be > 0, got {self.clamp_factor}")
        if self.similarity not in SIMILARITIES:
            raise HParamsError(f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        if not self.temperature > 0:
            raise HParamsError(f"temperature must be > 0, got {self.temperature}")
        if self.ridge < 0:
            raise HParamsError(f"ridge must be >= 0, got {self.ridge}")
        if self.preserve < 0:
            raise HParamsError(f"preserve must be >= 0, got {self.preserve}")
        for t in self.templates:
            if t.count("{}") != 1:
                raise HParamsError(f"template {t!r} must contain exactly one '{{}}'")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["templates"] = list(self.templates)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ReFACTHParams":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise HParamsError(f"unknown hyperparameter(s): {', '.join(sorted(unknown))}")
        return cls(**data)

    def with_overrides(self, **overrides: Any) -> "ReFACTHParams":
        """A copy with the non-None overrides applied."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def resolve(self, given: "ReFACTHParams | Mapping[str, Any] | None") -> "ReFACTHParams":
        """``given`` when it is a full set; otherwise this set with its overrides (None: unchanged)."""
        if isinstance(given, ReFACTHParams):
            return given
        return self.with_overrides(**dict(given or {}))

    def fingerprint(self) -> str:
        """Short stable hash of all values (for grouping and cache keys)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
