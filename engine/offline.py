"""Keep the Hugging Face libraries offline: the project never downloads weights."""

from __future__ import annotations

import os
import sys

_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "DIFFUSERS_OFFLINE")


def ensure_offline() -> None:
    """Switch huggingface_hub, transformers and diffusers to offline mode.

    The libraries read these variables once, when they are imported, so this runs before they are;
    if huggingface_hub is already imported its cached flag is flipped as well.
    """
    for name in _OFFLINE_VARS:
        os.environ[name] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None and hasattr(constants, "HF_HUB_OFFLINE"):
        constants.HF_HUB_OFFLINE = True


def hub_cache_dir() -> str:
    """The Hugging Face hub cache folder in use (honours HF_HUB_CACHE and HF_HOME)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def quiet_hf_logging(diffusers: bool = True) -> None:
    """Silence transformers (and, with ``diffusers``, diffusers) warnings and progress bars; errors still
    show. Loading only a tokenizer passes False: importing diffusers costs seconds (CLI start-up)."""
    from transformers.utils import logging as tlog

    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    if diffusers:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
