"""Shared pieces of the random-weight builders: errors, names, folder handling."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.errors import EngineError

SIZES = ("tiny", "full")
ARCHS = ("sd1", "sd2", "sdxl", "sd3", "flux", "z-image", "flux2-klein", "lumina2", "pixart-sigma", "chroma", "qwen-image",
         "flux2", "hidream", "sana", "cogview4")
DTYPES = ("float32", "bfloat16")
TEXT_ENCODER_FAMILIES = ("clip", "bert")

# The diffusers class each family is saved as (model_index.json `_class_name`).
PIPELINE_CLASSES = {
    "sd1": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sd3": "StableDiffusion3Pipeline",
    "flux": "FluxPipeline",
    "z-image": "ZImagePipeline",
    "flux2-klein": "Flux2KleinPipeline",
    "lumina2": "Lumina2Pipeline",
    "pixart-sigma": "PixArtSigmaPipeline",
    "chroma": "ChromaPipeline",
    "qwen-image": "QwenImagePipeline",
    "flux2": "Flux2Pipeline",
    "hidream": "HiDreamImagePipeline",
    "sana": "SanaPipeline",
    "cogview4": "CogView4Pipeline",
}


class BuildError(EngineError):
    """A model could not be built (bad size, arch or family, missing BPE file, unwritable folder)."""


def check_choice(kind: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise BuildError(f"unknown model {kind} {value!r}; use one of {', '.join(choices)}")


def prepare_folder(path: Path) -> Path:
    """Create ``path`` (it must be new or empty) and return it."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise BuildError(f"{path} is a file; pass a folder path to build the model in")
    if path.is_dir() and any(path.iterdir()):
        raise BuildError(f"{path} is not empty; pass a new or empty folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_build_info(path: Path, **info: Any) -> None:
    # Marks the folder as a random-weight build so reports never mistake it for a trained model.
    (path / "refact_build.json").write_text(json.dumps({"random_weights": True, **info}, indent=2) + "\n")
