"""What a bench run depends on: its options (enough to rerun it) and the provenance recorded with it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.evaluation.config import PAPER_SEEDS, GenerationConfig, ImageEvalConfig

LIBRARIES = ("torch", "diffusers", "transformers", "open_clip_torch", "numpy")
CAPTIONS = Path(__file__).resolve().parents[2] / "datasets" / "bench_captions.txt"
FID_HOWTO = ("FID skipped: put pytorch-fid's pt_inception-2015-12-05-6726825d.pth into $TORCH_HOME/hub/checkpoints "
             "and `pip install pytorch-fid` (never downloaded here)")


@dataclass(frozen=True)
class BenchOptions:
    """One `refact bench` invocation. ``hparams``: the method's hyperparameter overrides (a rerun
    passes the full stored set). ``model`` None = the workspace's base model."""

    file: str
    method: str = "refact"
    hparams: dict[str, Any] = field(default_factory=dict)
    text_only: bool = False
    limit: int | None = None
    seeds: int = PAPER_SEEDS
    seed_offset: int = 0
    steps: int = 50
    guidance: float = 7.5
    height: int | None = None
    width: int | None = None
    batch_size: int = 8
    judge: str | None = None
    captions: str | None = None          # None = the project's caption subset
    n_captions: int = 8
    quality: bool = True
    device: str = "auto"
    model: str | None = None
    format: str = "auto"
    negatives: str | None = None         # ICEB: class-prompt file the specificity probes come from
    stats_samples: int | None = None     # ReFACT's C: None = the workspace's setting, resolved when run
    stats_corpus: str | None = None
    vectorised: bool = True              # ReFACT: the batch helper's vectorised v* when it is there

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BenchOptions":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def image_config(self) -> ImageEvalConfig:
        gen = GenerationConfig(steps=self.steps, guidance=self.guidance, height=self.height, width=self.width,
                               batch_size=self.batch_size)
        return ImageEvalConfig(seeds=self.seeds, seed_offset=self.seed_offset, generation=gen, judge=self.judge,
                               baseline=False, oracle=False, grids=False, quality=False, device=self.device)

    def captions_path(self) -> Path:
        return Path(self.captions).expanduser() if self.captions else CAPTIONS


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            out[lib] = "not installed"
    return out


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as {"a.b": value}."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


# Config keys that differ between runs without changing what was measured.
NOT_CONFIG = ("started_at",)
SKIP_PREFIXES = ("options.hparams.",)  # the same values as hparams.*


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, value in a, value in b) for every flattened config key that differs."""
    fa, fb = flatten(a), flatten(b)
    keys = sorted(set(fa) | set(fb))
    return [(k, fa.get(k), fb.get(k)) for k in keys if fa.get(k) != fb.get(k) and not k.endswith(NOT_CONFIG)
            and not k.startswith(SKIP_PREFIXES)]
