"""Hyperparameters of a ReFACT edit.

Defaults are the configuration that produced the paper's RoAD numbers (layer 7, lr 0.05, at most
100 evaluations, threshold 0.99, weight decay 0.1 in the ||delta|| / ||v0||^2 form, clamp 4 * ||v0||,
plain L2 distances). The reference README's ``--v_weight_decay 0.01`` never reached its code (B2),
so 0.1 is what really ran.
"""

from __future__ import annotations

import hashlib
import json
import math
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
class HParamRange:
    """The allowed values of one numeric hyperparameter: finite, within [low, high] (``low`` excluded
    when ``low_open``). The bounds are wide (nothing sensible is refused) but keep every job finite."""

    name: str
    low: float
    high: float
    integer: bool = False
    low_open: bool = False

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    def describe(self) -> str:
        if self.integer:
            return f"an integer in {int(self.low)}..{int(self.high)}"
        left = "(" if self.low_open else "["
        return f"a finite number in {left}{self.low:g}, {self.high:g}]"

    def check(self, value: Any) -> None:
        """HParamsError unless ``value`` is allowed (bools, strings and non-finite numbers never are)."""
        ok = not isinstance(value, bool)
        if ok and self.integer:
            ok = isinstance(value, int) and self.low <= value <= self.high
        elif ok:
            ok = isinstance(value, (int, float)) and math.isfinite(value) and (
                (value > self.low if self.low_open else value >= self.low) and value <= self.high)
        if not ok:
            raise HParamsError(f"{self.option} ({self.name}) must be {self.describe()}, got {value!r}")


# Every numeric hyperparameter and its range, checked in this order. A field another helper adds
# gets its range here; names not on the dataclass are skipped.
HPARAM_RANGES: tuple[HParamRange, ...] = (
    HParamRange("layer", 0, 1000, integer=True),
    HParamRange("lr", 0.0, 10.0, low_open=True),
    HParamRange("max_steps", 1, 100_000, integer=True),
    HParamRange("prob_threshold", 0.0, 1.0, low_open=True),
    HParamRange("weight_decay", 0.0, 1e6),
    HParamRange("clamp_factor", 0.0, 1e6, low_open=True),
    HParamRange("temperature", 1e-6, 1e6),
    HParamRange("ridge", 0.0, 1e6),
    HParamRange("min_division", 0.0, 1e12, low_open=True),
    HParamRange("preserve", 0.0, 1e6),
    HParamRange("moment_rank", 0, 1 << 16, integer=True),
)
MAX_TEMPLATES = 64
# The paper's edit depth: layer 7 of SD1's 12 (the default layer), as a share of an encoder's layers.
PAPER_DEPTH = 7 / 12
# Softmax temperature of encoders whose features are L2-normalised (BERT sentence encoders): distances
# are then at most 2, and at temperature 1 P(target) of two texts cannot pass about 0.7, so the 0.99
# early stop never fires. Measured on all-MiniLM-L6-v2 over the 9 RoAD validation edits (layer 4):
# 1.0 -> 0/9 early stops, mean P 0.68; 0.1 -> 5/9; 0.05 -> 8/9, 34 steps, E 0.89 G 0.80 S 0.98 (best G);
# 0.02 -> 9/9, G 0.76. Raw (unnormalised) features keep the paper's 1.0.
NORMALIZED_FEATURES_TEMPERATURE = 0.05


def default_temperature(normalized_features: bool) -> float:
    """The default temperature of an encoder: NORMALIZED_FEATURES_TEMPERATURE or the paper's 1.0."""
    return NORMALIZED_FEATURES_TEMPERATURE if normalized_features else 1.0


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
    # u solves against C's rank-k + diagonal approximation (Woodbury) instead of dense C when > 0:
    # O(width x k) solve memory at LLM widths; see engine.methods.refact.linalg. 0 = dense (the paper).
    moment_rank: int = 0
    # Encoder slots to edit (pipeline attribute names); empty = every slot of the model.
    slots: tuple[str, ...] = ()
    # Per-slot layers, (slot, layer) pairs; a slot not listed uses ``layer`` when it is the model's
    # first slot, else its own default depth (engine.slots.default_layer_for).
    slot_layers: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.templates, (str, bytes)) or not hasattr(self.templates, "__iter__"):
            raise HParamsError(f"templates must be a list of texts, got {type(self.templates).__name__}")
        object.__setattr__(self, "templates", tuple(self.templates))
        object.__setattr__(self, "slots", tuple(self.slots))
        pairs = self.slot_layers.items() if isinstance(self.slot_layers, Mapping) else self.slot_layers
        object.__setattr__(self, "slot_layers", tuple((str(k), v) for k, v in pairs))
        self.validate()

    def layer_for(self, slot: str) -> int | None:
        """The layer given for ``slot`` in ``slot_layers``, or None."""
        return dict(self.slot_layers).get(slot)

    def validate(self) -> None:
        """Raise HParamsError naming the first bad value, its CLI option and its allowed range."""
        for spec in HPARAM_RANGES:
            if hasattr(self, spec.name):
                spec.check(getattr(self, spec.name))
        if not isinstance(self.similarity, str) or self.similarity not in SIMILARITIES:
            raise HParamsError(f"--similarity must be one of {', '.join(SIMILARITIES)}, got {self.similarity!r}")
        if len(self.templates) > MAX_TEMPLATES:
            raise HParamsError(f"at most {MAX_TEMPLATES} templates are allowed, got {len(self.templates)}")
        for t in self.templates:
            if not isinstance(t, str) or t.count("{}") != 1:
                raise HParamsError(f"template {t!r} must be text containing exactly one '{{}}'")
        for slot, layer in self.slot_layers:
            if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                raise HParamsError(f"--layer {slot}=N needs a layer number >= 0, got {layer!r}")
        if len(dict(self.slot_layers)) != len(self.slot_layers):
            raise HParamsError("a slot is given two layers; pass --layer SLOT=N once per slot")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["templates"] = list(self.templates)
        # per-slot fields and moment_rank only when set, so earlier hyperparameters keep their fingerprint
        for name in ("slots", "slot_layers"):
            d.pop(name)
        if not self.moment_rank:
            d.pop("moment_rank")
        if self.slots:
            d["slots"] = list(self.slots)
        if self.slot_layers:
            d["slot_layers"] = {k: v for k, v in self.slot_layers}
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ReFACTHParams":
        if not isinstance(data, Mapping):
            raise HParamsError(f"hyperparameters must be an object of values, got {type(data).__name__}")
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
