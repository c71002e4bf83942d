"""engine.builder for SD2, SDXL, SD3 and FLUX: folders that diffusers loads offline, real full shapes,
the offline T5 tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

from engine.builder import (
    BuildError,
    build_pipeline,
    build_t5_tokenizer,
    make_pipeline,
    make_text_encoder,
    pipeline_configs,
)
from engine.builder.vocab import t5_pieces
from engine.hashing import module_hash

FAMILIES = {
    "sd2": ("StableDiffusionPipeline", {"text_encoder": "CLIPTextModel"}),
    "sdxl": ("StableDiffusionXLPipeline", {"text_encoder": "CLIPTextModel", "text_encoder_2": "CLIPTextModelWithProjection"}),
    "sd3": ("StableDiffusion3Pipeline", {"text_encoder": "CLIPTextModelWithProjection",
                                         "text_encoder_2": "CLIPTextModelWithProjection",
                                         "text_encoder_3": "T5EncoderModel"}),
    "flux": ("FluxPipeline", {"text_encoder": "CLIPTextModel", "text_encoder_2": "T5EncoderModel"}),
    "z-image": ("ZImagePipeline", {"text_encoder": "Qwen3Model"}),
    "flux2-klein": ("Flux2KleinPipeline", {"text_encoder": "Qwen3ForCausalLM"}),
    "lumina2": ("Lumina2Pipeline", {"text_encoder": "Gemma2Model"}),
    "pixart-sigma": ("PixArtSigmaPipeline", {"text_encoder": "T5EncoderModel"}),
    "chroma": ("ChromaPipeline", {"text_encoder": "T5EncoderModel"}),
    "qwen-image": ("QwenImagePipeline", {"text_encoder": "Qwen2_5_VLForConditionalGeneration"}),
}


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_family_folder_loads_offline_with_its_real_class(arch, pipeline_dir_for):
    from diffusers import DiffusionPipeline

    folder = pipeline_dir_for(arch)
    class_name, encoders = FAMILIES[arch]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == class_name
    assert {k: v[1] for k, v in index.items() if k.startswith("text_encoder")} == encoders
    assert not list(folder.rglob("*.bin"))
    assert json.loads((folder / "refact_build.json").read_text())["arch"] == arch
    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    assert type(pipe).__name__ == class_name
    fresh = make_pipeline("tiny", 0, arch)
    for name in list(encoders) + ["vae", "unet" if arch in ("sd2", "sdxl") else "transformer"]:
        assert module_hash(getattr(pipe, name)) == module_hash(getattr(fresh, name)), name


def test_conditioning_widths_match_between_encoders_and_denoiser():
    for size in ("tiny", "full"):
        xl = pipeline_configs(size, "sdxl")
        l, g = xl.encoders["text_encoder"].config, xl.encoders["text_encoder_2"].config
        assert xl.denoiser["cross_attention_dim"] == l["hidden_size"] + g["hidden_size"]
        assert xl.denoiser["projection_class_embeddings_input_dim"] == g["projection_dim"] + 6 * xl.denoiser["addition_time_embed_dim"]
        sd3 = pipeline_configs(size, "sd3")
        t5 = sd3.encoders["text_encoder_3"].config
        assert sd3.denoiser["joint_attention_dim"] == t5["d_model"]
        flux = pipeline_configs(size, "flux")
        assert flux.denoiser["pooled_projection_dim"] == flux.encoders["text_encoder"].config["hidden_size"]
    assert pipeline_configs("full", "sdxl").denoiser["cross_attention_dim"] == 2048
    assert pipeline_configs("full", "sd3").denoiser["pooled_projection_dim"] == 2048


def test_full_encoders_have_the_real_parameter_counts():
    counts = {}
    with torch.device("meta"):
        for arch, name in (("sd2", "text_encoder"), ("sdxl", "text_encoder_2"), ("flux", "text_encoder_2")):
            spec = pipeline_configs("full", arch).encoders[name]
            counts[(arch, name)] = sum(p.numel() for p in make_text_encoder(spec).parameters())
    # OpenCLIP-H minus its last block (SD2), OpenCLIP-bigG with projection (SDXL), T5-v1.1-XXL encoder
    assert counts == {
        ("sd2", "text_encoder"): 340_387_840,
        ("sdxl", "text_encoder_2"): 694_659_840,
        ("flux", "text_encoder_2"): 4_762_310_656,
    }


def test_t5_tokenizer_has_t5_id_layout_and_reloads(tmp_path):
    from transformers import AutoTokenizer, T5TokenizerFast

    tok = build_t5_tokenizer()
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    n = len(tok)
    assert tok.convert_tokens_to_ids("<extra_id_0>") == n - 1
    assert tok.convert_tokens_to_ids("<extra_id_99>") == n - 100
    assert n <= pipeline_configs("tiny", "flux").encoders["text_encoder_2"].config["vocab_size"]
    ids = tok("A portrait of the Prince of Wales, 1999").input_ids
    assert ids[-1] == 1 and 2 not in ids and 0 not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "A portrait of the Prince of Wales, 1999"
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert isinstance(again, T5TokenizerFast)
    texts = ["a red car", "Secretary-General of the United Nations, realistic", "café crème"]
    assert again(texts).input_ids == tok(texts).input_ids
    # the vocabulary is identical from build to build (trainer scores are not, ours are)
    t5_pieces.cache_clear()
    assert build_t5_tokenizer().get_vocab() == tok.get_vocab()


def test_bad_arch_and_dtype_are_refused_before_writing(tmp_path):
    with pytest.raises(BuildError, match="unknown model arch 'sd4'"):
        build_pipeline(tmp_path / "x", arch="sd4")
    with pytest.raises(BuildError, match="unknown model dtype"):
        build_pipeline(tmp_path / "y", arch="sdxl", dtype="int8")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_model_build_writes_the_family(tmp_path):
    from typer.testing import CliRunner

    from refact_tui.cli.main import app

    runner = CliRunner()
    res = runner.invoke(app, ["model", "build", str(tmp_path / "m"), "--arch", "flux"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "m" / "model_index.json").read_text())["_class_name"] == "FluxPipeline"
    bad = runner.invoke(app, ["model", "build", str(tmp_path / "n"), "--arch", "sd9"])
    assert bad.exit_code != 0 and not (tmp_path / "n").exists()


@pytest.mark.parametrize("arch, style, markers", [
    ("z-image", "Qwen2Tokenizer", ["<|im_start|>", "<|im_end|>", "<think>"]),
    ("flux2-klein", "Qwen2Tokenizer", ["<|im_start|>", "<|im_end|>", "</think>"]),
    ("lumina2", "GemmaTokenizer", ["<bos>", "<start_of_turn>"]),
])
def test_llm_tokenizers_carry_the_chat_tokens_their_pipeline_uses(arch, style, markers, pipeline_dir_for):
    from transformers import AutoTokenizer

    folder = pipeline_dir_for(arch)
    assert json.loads((folder / "model_index.json").read_text())["tokenizer"][1] == style
    tok = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    assert type(tok).__name__ == style and tok.chat_template
    for marker in markers:
        assert tok.convert_tokens_to_ids(marker) != tok.unk_token_id and len(tok(marker, add_special_tokens=False)["input_ids"]) == 1
    text = tok.apply_chat_template([{"role": "user", "content": "a red dog"}], tokenize=False, add_generation_prompt=True)
    assert "a red dog" in text and tok.decode(tok(text)["input_ids"], skip_special_tokens=False).endswith(text)


@pytest.mark.parametrize("arch", ["z-image", "flux2-klein", "lumina2", "pixart-sigma", "chroma", "qwen-image"])
def test_full_2026_builds_are_refused_with_what_they_need(arch, tmp_path):
    with pytest.raises(BuildError, match=r"^--size full is not built for .*: it needs the real text encoder \((Qwen3|Qwen2\.5-VL|Gemma-2|T5)"):
        build_pipeline(tmp_path / "m", size="full", arch=arch)
    assert not (tmp_path / "m").exists()
