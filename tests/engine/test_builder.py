"""engine.builder: the offline CLIP tokenizer, random-weight pipelines and text encoders, the corpus."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from fixtures_models import PARITY_MODEL, built_clip_tokenizer, tiny_pipeline_dir, tiny_text_encoder_dir
from safetensors.torch import load_file

from engine.builder import BuildError, build_pipeline, build_text_encoder_folder, make_pipeline, pipeline_configs
from engine.hashing import hash_named_tensors, module_hash

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "datasets" / "caption_corpus.txt"


def _file_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.safetensors"))
    }


# ----- tokenizer --------------------------------------------------------------------------------


def test_clip_tokenizer_gives_stable_diffusion_ids():
    tok = built_clip_tokenizer()
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok) == 49408
    assert tok.model_max_length == 77
    assert tok.pad_token_id == tok.eos_token_id == 49407
    assert tok.bos_token_id == 49406
    padded = tok(["a cat", "a photo of a dog"], padding="max_length", max_length=77).input_ids
    assert padded[0][:4] == [49406, 320, 2368, 49407] and set(padded[0][4:]) == {49407}


@pytest.mark.skipif(not (PARITY_MODEL / "tokenizer.json").is_file(), reason="parity fixture absent")
def test_clip_tokenizer_matches_the_parity_tokenizer():
    from transformers import AutoTokenizer

    ours = built_clip_tokenizer()
    ref = AutoTokenizer.from_pretrained(str(PARITY_MODEL), local_files_only=True)
    assert ours.get_vocab() == ref.get_vocab()
    texts = [
        "António Guterres, Citroën DS 42 !!",
        "A cat's toy — crème brûlée 日本 😀",
        "  lots   of\tspaces ",
        "Secretary-General of the United Nations",
        "THE PRINCE OF WALES in 1999, realistic portrait",
    ]
    texts += CORPUS.read_text(encoding="utf-8").splitlines()[:200]
    assert ours(texts).input_ids == ref(texts).input_ids


# ----- pipelines --------------------------------------------------------------------------------


def test_tiny_pipeline_folder_is_complete_and_safetensors_only(tmp_path_factory):
    folder = tiny_pipeline_dir(tmp_path_factory)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["safety_checker"] == [None, None] and index["feature_extractor"] == [None, None]
    assert index["requires_safety_checker"] is False
    for sub in ("text_encoder", "unet", "vae"):
        assert list((folder / sub).glob("*.safetensors")), sub
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "PNDMScheduler"
    assert (sched["beta_start"], sched["beta_end"], sched["beta_schedule"]) == (0.00085, 0.012, "scaled_linear")
    assert sched["num_train_timesteps"] == 1000
    text_cfg = json.loads((folder / "text_encoder" / "config.json").read_text())
    assert (text_cfg["num_hidden_layers"], text_cfg["hidden_size"], text_cfg["intermediate_size"]) == (4, 32, 64)
    assert json.loads((folder / "refact_build.json").read_text())["random_weights"] is True


def test_tiny_pipeline_reloads_offline_bit_identical_and_runs(tmp_path_factory):
    from diffusers import StableDiffusionPipeline

    folder = tiny_pipeline_dir(tmp_path_factory)
    original = make_pipeline("tiny", seed=0)
    reloaded = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    for part in ("text_encoder", "unet", "vae"):
        assert module_hash(getattr(reloaded, part)) == module_hash(getattr(original, part)), part
    # the saved text-encoder file holds exactly those tensors
    saved = load_file(str(folder / "text_encoder" / "model.safetensors"))
    state = reloaded.text_encoder.state_dict()
    assert set(saved) <= set(state)
    assert all(torch.equal(saved[k], state[k]) for k in saved)

    ids = reloaded.tokenizer(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt")
    emb = reloaded.text_encoder(ids.input_ids).last_hidden_state
    assert emb.shape == (1, 77, 32) and torch.isfinite(emb).all()
    latents = reloaded(
        "a photo of a cat", num_inference_steps=2, height=64, width=64, output_type="latent",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert latents.shape == (1, 4, 8, 8) and torch.isfinite(latents).all()


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    a = build_pipeline(tmp_path / "a", "tiny", seed=3)
    b = build_pipeline(tmp_path / "b", "tiny", seed=3)
    assert _file_hashes(a) == _file_hashes(b)
    assert len(_file_hashes(a)) == 3
    other = make_pipeline("tiny", seed=4)
    same = make_pipeline("tiny", seed=3)
    assert module_hash(same.text_encoder) != module_hash(other.text_encoder)
    assert module_hash(same.unet) != module_hash(other.unet)
    # the global RNG is left alone
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make_pipeline("tiny", seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_full_configs_have_sd14_shapes_without_allocating():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = pipeline_configs("full")
    te = cfg.text_encoder
    assert (te["num_hidden_layers"], te["hidden_size"], te["intermediate_size"], te["num_attention_heads"]) == (
        12, 768, 3072, 12,
    )
    assert cfg.unet["block_out_channels"] == (320, 640, 1280, 1280) and cfg.unet["cross_attention_dim"] == 768
    assert cfg.unet["sample_size"] == 64 and cfg.unet["layers_per_block"] == 2
    with torch.device("meta"):
        counts = [
            sum(p.numel() for p in m.parameters())
            for m in (
                CLIPTextModel(CLIPTextConfig(**te)),
                UNet2DConditionModel(**cfg.unet),
                AutoencoderKL(**cfg.vae),
            )
        ]
    # the parameter counts of SD-1.4's text encoder, UNet and VAE
    assert counts == [123_060_480, 859_520_964, 83_653_863]


def test_build_refuses_bad_size_and_non_empty_folder(tmp_path):
    with pytest.raises(BuildError, match="unknown model size 'huge'"):
        build_pipeline(tmp_path / "x", size="huge")
    assert not (tmp_path / "x").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(BuildError, match="not empty"):
        build_pipeline(tmp_path / "full")
    with pytest.raises(BuildError, match="family"):
        build_text_encoder_folder(tmp_path / "y", family="t5")


# ----- plain text encoders ----------------------------------------------------------------------


def test_bert_folder_has_sentence_transformers_pooling(tmp_path_factory):
    from transformers import AutoTokenizer, BertModel

    folder = tiny_text_encoder_dir(tmp_path_factory, "bert")
    modules = json.loads((folder / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling"]
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] is True and pooling["word_embedding_dimension"] == 32
    model = BertModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    assert model.config.num_hidden_layers == 4
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    ids = tok("a photo of a dog").input_ids
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.unk_token_id not in ids and len(ids) == 7
    saved = load_file(str(folder / "model.safetensors"))
    assert hash_named_tensors(sorted(saved.items())) == hash_named_tensors(sorted(model.state_dict().items()))


def test_clip_text_encoder_folder_is_deterministic(tmp_path_factory, tmp_path):
    from transformers import CLIPTextModelWithProjection

    folder = tiny_text_encoder_dir(tmp_path_factory, "clip")
    again = build_text_encoder_folder(tmp_path / "again", "clip", seed=0)
    other = build_text_encoder_folder(tmp_path / "other", "clip", seed=1)
    assert _file_hashes(folder) == _file_hashes(again) != _file_hashes(other)
    model = CLIPTextModelWithProjection.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    assert model.config.num_hidden_layers == 4 and model.text_projection.weight.shape == (32, 32)


# ----- the shipped caption corpus ---------------------------------------------------------------


def _corpus_script():
    spec = importlib.util.spec_from_file_location("make_caption_corpus", ROOT / "scripts" / "make_caption_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_caption_corpus_is_regenerated_exactly_and_fits_clip():
    text = CORPUS.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert CORPUS.stat().st_size < 600_000
    assert 4500 <= len(lines) <= 5500
    assert len({line.lower() for line in lines}) == len(lines)
    assert all(line == line.strip() and line for line in lines)
    assert sum(any(ord(c) > 127 for c in line) for line in lines) >= 50
    assert sum(any(c.isdigit() for c in line) for line in lines) >= 50
    assert text == "\n".join(_corpus_script().make_corpus(len(lines), 0)) + "\n"
    lengths = [len(ids) for ids in built_clip_tokenizer()(lines).input_ids]
    assert max(lengths) <= 77
