"""Configuration dataclasses of text- and image-space evaluation (paper defaults)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from engine.errors import EngineError

# Seeds 0..24 as in the ReFACT paper's scoring scripts.
PAPER_SEEDS = 25
GENERALITY_THRESHOLDS = (0.75, 0.9)


class EvalConfigError(EngineError, ValueError):
    """An evaluation setting is out of range."""


@dataclass(frozen=True)
class GenerationConfig:
    """How images are generated. None for height/width means the pipeline's own default
    (512x512 for SD-1.x); the scheduler is always the pipeline's own (PNDM for SD-1.x)."""

    steps: int = 50
    guidance: float = 7.5
    height: int | None = None
    width: int | None = None
    batch_size: int = 8
    # On CUDA the UNet and VAE run in fp16; the text encoder always stays fp32.
    fp16: bool = True
    output_type: str = "pil"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise EvalConfigError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise EvalConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if self.output_type not in ("pil", "latent", "pt", "np"):
            raise EvalConfigError(f"output_type must be pil, latent, pt or np, got {self.output_type!r}")
        for name in ("height", "width"):
            v = getattr(self, name)
            if v is not None and (v < 8 or v % 8):
                raise EvalConfigError(f"{name} must be a multiple of 8, got {v}")


@dataclass(frozen=True)
class TextEvalConfig:
    """Text-space metrics. similarity None = the edit's own hparams (what the optimizer used)."""

    similarity: str | None = None
    temperature: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ImageEvalConfig:
    """Everything an image evaluation depends on; stored with the eval run."""

    seeds: int = PAPER_SEEDS
    seed_offset: int = 0
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    # None = the paper's judge, open_clip ViT-bigG-14 laion2b_s39b_b160k from the local cache.
    judge: str | None = None
    baseline: bool = True
    oracle: bool = False
    grids: bool = True
    grid_seeds: int = 4
    quality: bool = False
    quality_captions: int = 8
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise EvalConfigError(f"seeds must be >= 1, got {self.seeds}")
        if self.seed_offset < 0:
            raise EvalConfigError(f"seed offset must be >= 0, got {self.seed_offset}")
        if self.grid_seeds < 0 or self.quality_captions < 0:
            raise EvalConfigError("grid seeds and quality captions must be >= 0")

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seed_offset, self.seed_offset + self.seeds))

    def with_generation(self, **overrides: Any) -> "ImageEvalConfig":
        """A copy whose generation settings have the non-None overrides applied."""
        gen = replace(self.generation, **{k: v for k, v in overrides.items() if v is not None})
        return replace(self, generation=gen)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
