"""The torch-free token counter (engine.token_counts) gives transformers' ids, or is not used.

Compared with the transformers tokenizer (as engine.models.load_tokenizer loads it, the slot's template
around it) on every tiny family build, on the real all-MiniLM-L6-v2 tokenizer and on a hub-style CLIP
folder (vocab.json + merges.txt, no tokenizer.json): the ids of hostile texts, with and without special
tokens, the limit, and the admission checker's verdicts on hostile requests.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from engine.admission import RequestChecker
from engine.builder import ARCHS
from engine.methods.refact.hparams import DEFAULT_TEMPLATES
from engine.request import EditRequest
from engine.token_counts import PROBES, CountingRecord, CountingTokenizer, load_counting_tokenizer, record_for

# beyond the probes the record is checked on: texts it has not seen
HOSTILE = (
    *PROBES, "Ünïcödé ÀÉÎÕÜ ÿ", "ǈǋǌ ᾈ ﬆ", "a\u0301\u0302\u0303 o\u0308", "🇫🇷🇩🇪 flags", "\t\t\n\n  \u2028\u2029 x",
    "한국어 텍스트", "ภาษาไทย", "हिन्दी", "(((nested))) [[x]] {{y}}", "a-b_c.d/e\\f", "$100 & 50% off #1 @home",
    "The Dalai Lama, who lives in India.", "don''t", "MIXED case WORDS With Capitals", "x" * 2000, "é" * 500,
    " ".join(f"w{i}" for i in range(400)), "😀" * 100,
)
REQUESTS = (
    EditRequest(prompt="The Eiffel Tower", source="Paris", target="Rome"),
    EditRequest(prompt="A photo of İstanbul ß straße", source="Turkey", target="Greece", subject="İstanbul"),
    EditRequest(prompt="🐱 cat 🐶 dog", source="cat", target="dog", subject="cat"),
    EditRequest(prompt="The Dalai Lama.", source="a monk", target="a king"),
    EditRequest(prompt="Mr. Smith's   HOUSE", source="a house", target="a boat", subject="Smith's"),
    EditRequest(prompt="word " * 90, source="words", target="more words"),
    EditRequest(prompt="A café", source="café", target="x" * 600),
)


def assert_same_counts(reference, fast) -> None:
    assert fast.model_max_length == reference.model_max_length
    for text in HOSTILE:
        for special in (True, False):
            want = reference(text, add_special_tokens=special, truncation=False)["input_ids"]
            got = fast(text, add_special_tokens=special, truncation=False)["input_ids"]
            assert list(got) == list(want), (text[:40], special)
    limit = min(int(reference.model_max_length), 10_000)
    ref_checker = RequestChecker.single(reference, limit, DEFAULT_TEMPLATES)
    fast_checker = RequestChecker.single(fast, limit, DEFAULT_TEMPLATES)
    for request in REQUESTS:
        assert [str(p) for p in fast_checker.problems(request)] == [str(p) for p in ref_checker.problems(request)]


def checked(reference):
    from engine.models import token_limit

    record = record_for(reference, token_limit(reference))
    assert record is not None and record.ok, "the torch-free tokenizer should reproduce this one"
    again = CountingRecord.from_json(record.to_json())
    assert again == record
    fast = again.tokenizer()
    assert isinstance(getattr(fast, "tokenizer", fast), CountingTokenizer)
    return fast


@pytest.mark.parametrize("arch", [a if a == "sd1" else pytest.param(a, marks=pytest.mark.slow) for a in ARCHS])
def test_counts_match_transformers_on_every_tiny_family(pipeline_dir_for, arch):
    from engine.models import load_tokenizer, pipeline_family
    from engine.slots import FAMILY_SLOTS

    folder = pipeline_dir_for(arch)
    for slot in FAMILY_SLOTS[pipeline_family(folder)]:
        reference = load_tokenizer(folder, slot)
        assert_same_counts(reference, checked(reference))


def test_counts_match_transformers_on_minilm(minilm_path):
    from engine.models import load_tokenizer

    reference = load_tokenizer(minilm_path)
    fast = checked(reference)
    assert_same_counts(reference, fast)
    assert fast("Hello WORLD", add_special_tokens=True)["input_ids"][0] == 101  # [CLS], lowercased text


def test_hub_style_clip_folder_without_tokenizer_json(model_dir, tmp_path):
    """SD hub snapshots ship CLIP's tokenizer as vocab.json + merges.txt with AddedToken dicts in its config."""
    from transformers import AutoTokenizer

    src = json.loads((model_dir / "tokenizer" / "tokenizer.json").read_text(encoding="utf-8"))
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(src["model"]["vocab"]), encoding="utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in src["model"]["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")

    def added(text):
        return {"__type": "AddedToken", "content": text, "lstrip": False, "normalized": True, "rstrip": False,
                "single_word": False}

    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_prefix_space": False, "bos_token": added("<|startoftext|>"), "do_lower_case": True,
        "eos_token": added("<|endoftext|>"), "errors": "replace", "model_max_length": 77,
        "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer", "unk_token": added("<|endoftext|>"),
    }), encoding="utf-8")
    reference = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert_same_counts(reference, checked(reference))


def test_a_tokenizer_it_cannot_reproduce_falls_back(model_dir, tmp_path):
    """A tokenizer.json whose normalizer transformers' class overrides (no lowercasing here): the record
    says so and no counting tokenizer is handed out."""
    from transformers import AutoTokenizer

    folder = tmp_path / "tokenizer"
    shutil.copytree(model_dir / "tokenizer", folder)
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    data["normalizer"] = {"type": "NFC"}
    (folder / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    reference = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert reference("A CAT")["input_ids"] != load_counting_tokenizer(folder)("A CAT")["input_ids"]
    record = record_for(reference, 77)
    assert record is not None and not record.ok and record.tokenizer() is None


def test_a_changed_folder_makes_the_record_stale(model_dir, tmp_path):
    from transformers import AutoTokenizer

    folder = tmp_path / "tokenizer"
    shutil.copytree(model_dir / "tokenizer", folder)
    record = record_for(AutoTokenizer.from_pretrained(folder, local_files_only=True), 77)
    assert record.ok and record.tokenizer() is not None
    config = folder / "tokenizer_config.json"
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert record.tokenizer() is None


def test_queue_paper_depth_is_the_engines():
    from engine.slots import PAPER_DEPTH
    from refact_tui.services import queue

    assert queue.PAPER_DEPTH == PAPER_DEPTH
