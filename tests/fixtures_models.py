"""Tiny random models built once per test session (never downloaded).

Import the helpers from any test (``from fixtures_models import tiny_pipeline_dir``) or register this
module as a plugin (``pytest_plugins = ["fixtures_models"]`` in tests/conftest.py) to get the fixtures.
Every helper caches its build for the session, so calling it again is free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PARITY_MODEL = SHARED_DATA / "parity" / "model"

_built: dict[tuple, Any] = {}


def _once(key: tuple, make):
    if key not in _built:
        _built[key] = make()
    return _built[key]


def tiny_pipeline_dir(tmp_path_factory, seed: int = 0) -> Path:
    """Folder of a tiny SD-v1 pipeline (4-layer CLIP text encoder, hidden 32) built with ``seed``."""
    from engine.builder import build_pipeline

    return _once(
        ("pipeline", seed),
        lambda: build_pipeline(tmp_path_factory.mktemp(f"tiny_pipeline_{seed}") / "model", "tiny", seed),
    )


def pipeline_dir(tmp_path_factory, arch: str = "sd1", seed: int = 0) -> Path:
    """Folder of a tiny pipeline of family ``arch`` (sd1, sd2, sdxl, sd3, flux), built once per session.

    Treat it as read-only: every test of the session shares it. ``sd1`` is ``tiny_pipeline_dir``.
    """
    from engine.builder import build_pipeline

    if arch == "sd1":
        return tiny_pipeline_dir(tmp_path_factory, seed)
    return _once(
        ("pipeline", arch, seed),
        lambda: build_pipeline(tmp_path_factory.mktemp(f"tiny_{arch}_{seed}") / "model", "tiny", seed, arch=arch),
    )


def loaded_pipeline(tmp_path_factory, arch: str = "sd1", seed: int = 0):
    """The tiny ``arch`` pipeline loaded with diffusers on CPU, fp32 (shared: restore what you edit)."""
    from diffusers import DiffusionPipeline

    return _once(
        ("loaded", arch, seed),
        lambda: DiffusionPipeline.from_pretrained(pipeline_dir(tmp_path_factory, arch, seed), local_files_only=True),
    )


def tiny_text_encoder_dir(tmp_path_factory, family: str = "clip", seed: int = 0) -> Path:
    """Folder of a tiny plain text encoder: ``clip`` (with projection) or ``bert`` (mean pooling)."""
    from engine.builder import build_text_encoder_folder

    return _once(
        ("encoder", family, seed),
        lambda: build_text_encoder_folder(tmp_path_factory.mktemp(f"tiny_{family}_{seed}") / "model", family, seed),
    )


def built_clip_tokenizer():
    """SD's CLIP tokenizer built offline from open_clip's BPE file (shared, treat as read-only)."""
    from engine.builder import build_clip_tokenizer

    return _once(("clip_tokenizer",), build_clip_tokenizer)


@pytest.fixture(scope="session")
def tiny_pipeline_path(tmp_path_factory) -> Path:
    return tiny_pipeline_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_clip_encoder_path(tmp_path_factory) -> Path:
    return tiny_text_encoder_dir(tmp_path_factory, "clip")


@pytest.fixture(scope="session")
def tiny_bert_encoder_path(tmp_path_factory) -> Path:
    return tiny_text_encoder_dir(tmp_path_factory, "bert")


@pytest.fixture(scope="session")
def sd_clip_tokenizer():
    return built_clip_tokenizer()


@pytest.fixture(scope="session")
def tiny_pipeline_model(tiny_pipeline_path):
    """The tiny pipeline loaded on CPU with engine.models.load_model (shared: restore what you edit)."""
    from engine.models import load_model

    return load_model(tiny_pipeline_path, device="cpu")
