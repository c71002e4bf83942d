"""engine.models: offline loading of pipelines and text encoders, devices, fc2 snapshots."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import pytest
import torch
from fixtures_models import PARITY_MODEL, tiny_pipeline_dir, tiny_text_encoder_dir
from safetensors.torch import load_file

import engine.models as models
from engine.errors import DeltaIntegrityError, EngineError, ModelFormatError, ModelNotFoundError
from engine.hashing import hash_named_tensors
from engine.models import load_model, read_pooling, resolve_device

HAS_ADAPTERS = importlib.util.find_spec("engine.adapters") is not None
needs_adapters = pytest.mark.skipif(not HAS_ADAPTERS, reason="engine.adapters not written yet")


@pytest.fixture(scope="module")
def pipeline_model(tmp_path_factory):
    return load_model(tiny_pipeline_dir(tmp_path_factory), device="cpu")


def test_ensure_offline_sets_the_variables_and_flips_an_imported_hub(monkeypatch):
    from huggingface_hub import constants

    from engine.offline import ensure_offline

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    ensure_offline()
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert constants.HF_HUB_OFFLINE is True


def test_pipeline_load_uses_the_pipelines_own_text_encoder(pipeline_model, tmp_path_factory):
    m = pipeline_model
    assert m.kind == "sd-pipeline" and m.device == torch.device("cpu")
    assert m.path == tiny_pipeline_dir(tmp_path_factory).resolve()
    assert m.pipeline is not None
    assert m.text_encoder is m.pipeline.text_encoder
    assert m.tokenizer is m.pipeline.tokenizer
    assert not m.text_encoder.training
    assert not any(p.requires_grad for p in m.text_encoder.parameters())
    saved = load_file(str(m.path / "text_encoder" / "model.safetensors"))
    state = m.text_encoder.state_dict()
    assert all(torch.equal(saved[k], state[k]) for k in saved)
    assert m.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_encoder_only_load_matches_the_pipeline_load(pipeline_model):
    fast = load_model(pipeline_model.path, device="cpu", with_pipeline=False)
    assert fast.kind == "sd-pipeline" and fast.pipeline is None
    assert type(fast.text_encoder).__name__ == "CLIPTextModel"
    assert fast.encoder_hash() == pipeline_model.encoder_hash()
    assert len(pipeline_model.encoder_hash()) == 64


@needs_adapters
def test_adapter_is_attached(pipeline_model, tmp_path_factory):
    assert pipeline_model.adapter.family == "clip" and pipeline_model.family == "sd1" and pipeline_model.encoder_family == "clip"
    assert pipeline_model.adapter.num_layers == 4
    assert pipeline_model.adapter.model is pipeline_model.text_encoder
    bert = load_model(tiny_text_encoder_dir(tmp_path_factory, "bert"), device="cpu")
    assert bert.adapter.family == "bert" and bert.adapter.pooling == "mean"


def test_clip_text_encoder_folder_loads_without_pipeline(tmp_path_factory):
    m = load_model(tiny_text_encoder_dir(tmp_path_factory, "clip"), device="cpu")
    assert m.kind == "text-encoder" and m.pipeline is None and m.pooling is None
    assert type(m.text_encoder).__name__ == "CLIPTextModelWithProjection"
    assert m.family == "clip"
    assert m.encoder_hash() == load_model(m.path, device="cpu").encoder_hash()


def test_bert_folder_loads_with_its_pooling_mode(tmp_path_factory):
    folder = tiny_text_encoder_dir(tmp_path_factory, "bert")
    m = load_model(str(folder), device="cpu")
    assert m.kind == "text-encoder" and m.family == "bert"
    assert m.pooling == ("mean", False)
    # loading twice gives the same weights (no randomly initialised pooler)
    assert m.encoder_hash() == load_model(folder, device="cpu").encoder_hash()
    assert sorted(m.fc2_modules()) == [f"encoder.layer.{i}.output.dense" for i in range(4)]


def test_read_pooling_variants(tmp_path):
    assert read_pooling(tmp_path) is None
    (tmp_path / "2_Pool").mkdir()
    (tmp_path / "2_Pool" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "path": "2_Pool", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))
    assert read_pooling(tmp_path) == ("cls", True)


@pytest.mark.skipif(not (PARITY_MODEL / "model.safetensors").is_file(), reason="parity fixture absent")
def test_parity_model_folder_loads_bit_identical():
    m = load_model(PARITY_MODEL, device="cpu")
    assert m.kind == "text-encoder"
    saved = load_file(str(PARITY_MODEL / "model.safetensors"))
    assert hash_named_tensors(sorted(saved.items())) == hash_named_tensors(
        sorted((k, v) for k, v in m.text_encoder.state_dict().items() if k in saved)
    )
    assert set(saved) == set(m.text_encoder.state_dict())


# ----- errors -----------------------------------------------------------------------------------


def test_missing_hub_id_names_the_id_and_the_cache():
    with pytest.raises(ModelNotFoundError) as info:
        load_model("CompVis/stable-diffusion-v1-4")
    message = str(info.value)
    assert "'CompVis/stable-diffusion-v1-4'" in message and "cache" in message and "--model" in message
    assert "\n" not in message


def test_missing_folder_names_the_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        load_model(missing)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(str(missing))


def test_folder_that_is_not_a_model_is_a_format_error(tmp_path):
    with pytest.raises(ModelFormatError, match="neither a diffusers pipeline"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelFormatError, match="safetensors"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ModelFormatError, match="'gpt2'"):
        load_model(tmp_path)


def test_cached_hub_id_resolves_offline(tmp_path, tmp_path_factory, monkeypatch):
    # a hub cache laid out like huggingface_hub's: models--org--name/{refs/main, snapshots/<rev>/...}
    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-clip"
    shutil.copytree(tiny_text_encoder_dir(tmp_path_factory, "clip"), repo / "snapshots" / rev)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    monkeypatch.setattr(models, "hub_cache_dir", lambda: str(tmp_path / "hub"))
    m = load_model("acme/tiny-clip", device="cpu")
    assert m.source == "acme/tiny-clip" and m.path.name == rev and m.kind == "text-encoder"
    with pytest.raises(ModelNotFoundError, match=str(tmp_path / "hub")):
        load_model("acme/other-model")


# ----- devices ----------------------------------------------------------------------------------


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(EngineError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="no CUDA GPU"):
            resolve_device("cuda:0")
    else:
        with pytest.raises(EngineError, match="does not exist"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


# ----- fc2 snapshots ----------------------------------------------------------------------------


def test_fc2_snapshot_restores_edits_in_place(pipeline_model):
    m = pipeline_model
    base_hash = m.encoder_hash()
    snapshot = m.snapshot_fc2()
    assert sorted(snapshot) == [f"encoder.layers.{i}.mlp.fc2.weight" for i in range(4)]
    fc2 = m.text_encoder.encoder.layers[2].mlp.fc2
    param = fc2.weight
    with torch.no_grad():
        fc2.weight += torch.outer(torch.ones(32), torch.ones(64))
    assert m.encoder_hash() != base_hash
    assert m.pipeline.text_encoder.encoder.layers[2].mlp.fc2.weight is param  # the pipeline sees the edit
    m.restore_fc2(snapshot)
    assert m.encoder_hash() == base_hash and fc2.weight is param
    with torch.no_grad():
        fc2.weight.mul_(2.0)
    m.restore_base()
    assert m.encoder_hash() == base_hash
    # snapshots are copies, not views of the live weights
    with torch.no_grad():
        fc2.weight.add_(1.0)
    assert torch.equal(m.base_fc2["encoder.layers.2.mlp.fc2.weight"], snapshot["encoder.layers.2.mlp.fc2.weight"])
    m.restore_base()
    assert m.encoder_hash() == base_hash


def test_restore_refuses_a_foreign_snapshot(pipeline_model):
    snapshot = pipeline_model.snapshot_fc2()
    wrong = dict(snapshot)
    wrong.pop("encoder.layers.0.mlp.fc2.weight")
    with pytest.raises(DeltaIntegrityError, match="does not belong"):
        pipeline_model.restore_fc2(wrong)
    bad_shape = dict(snapshot)
    bad_shape["encoder.layers.0.mlp.fc2.weight"] = torch.zeros(3, 3)
    with pytest.raises(DeltaIntegrityError, match="shape"):
        pipeline_model.restore_fc2(bad_shape)
