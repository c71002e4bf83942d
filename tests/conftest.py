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

import pytest  # noqa: E402


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
def model_dir(tmp_path_factory):
    """Folder of the tiny SD pipeline shared by the workspace, worker, history, export and CLI tests."""
    from fixtures_models import tiny_pipeline_dir

    return tiny_pipeline_dir(tmp_path_factory)
