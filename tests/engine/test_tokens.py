"""Subject-last-token index arithmetic, its cross-check, and length limits."""

from __future__ import annotations

import pytest

from engine.errors import TokenizationError
from engine.methods.refact.hparams import DEFAULT_TEMPLATES
from engine.tokens import check_length, leading_specials, locate_all, locate_subject, rewriting_templates


def token_at(tok, located):
    return tok.convert_ids_to_tokens(tok(located.text)["input_ids"])[located.index]


def test_rewriting_templates_bare_first_and_deduped():
    got = rewriting_templates(["b {}", "{}", "a {}", "b {}"])
    assert got == ["{}", "b {}", "a {}"]


def test_default_templates_match_reference_indices(clip_tokenizer):
    located = locate_all(clip_tokenizer, rewriting_templates(DEFAULT_TEMPLATES), "the prince of wales", None, 77)
    assert [p.index for p in located] == [4, 4, 4, 7, 8, 4, 8, 7, 4, 4]
    assert located[3].text == "realistic painting of the prince of wales"
    assert {token_at(clip_tokenizer, p) for p in located} == {"wales</w>"}


@pytest.mark.parametrize(
    "template, prompt, subject, index, token",
    [
        ("{}, a portrait", "Wendy's", None, 2, "'s</w>"),  # wendy + 's
        ("a photo of {}", "Wendy's burger", "wendy", 4, "wendy</w>"),
        ("a photo of {}", "Citroën DS", "Citroën", 6, "n</w>"),  # citro + ë + n (byte-level BPE)
        ("{} in a photo", "António Guterres", None, 5, "guterres</w>"),
        ("{}, news image", "r2d2, the robot", "r2d2", 4, "2</w>"),  # digits split one per token
        ("realistic drawing of {}", "the prince of wales", "prince", 5, "prince</w>"),
        ("{}", "  the prince of wales  ", " wales ", 4, "wales</w>"),  # outer spaces ignored
        ("a {}", "Canada's Prime Minister, 2024", "canada's prime minister", 5, "minister</w>"),
    ],
)
def test_index_cases(clip_tokenizer, template, prompt, subject, index, token):
    located = locate_subject(clip_tokenizer, template, prompt, subject, 77)
    assert located.index == index
    assert token_at(clip_tokenizer, located) == token
    assert located.length == len(clip_tokenizer(located.text)["input_ids"])


def test_spaces_and_case_do_not_change_the_index(clip_tokenizer):
    a = locate_subject(clip_tokenizer, "a photo of {}", "The Prince of Wales", None, 77)
    b = locate_subject(clip_tokenizer, "a photo of {}", "  the prince of wales ", None, 77)
    assert a.index == b.index == 7


@pytest.mark.parametrize(
    "prompt, subject, fragment",
    [
        ("the princess of wales", "prince", "whole tokens"),  # ends inside a word
        ("a bowl of fruit", "banana", "does not occur"),
        ("a bowl of fruit", "   ", "empty"),
        ("", None, "empty"),
    ],
)
def test_bad_subjects_raise(clip_tokenizer, prompt, subject, fragment):
    with pytest.raises(TokenizationError, match=fragment):
        locate_subject(clip_tokenizer, "{}", prompt, subject, 77)


def test_too_long_raises_instead_of_truncating(clip_tokenizer):
    prompt = "word " * 74 + "end"  # 75 words + BOS + EOS = 77 tokens: fits exactly
    assert locate_subject(clip_tokenizer, "{}", prompt, "end", 77).index == 75
    with pytest.raises(TokenizationError, match="78 tokens"):
        locate_subject(clip_tokenizer, "a {}", prompt, "end", 77)
    with pytest.raises(TokenizationError, match="more than the encoder's 77"):
        check_length(clip_tokenizer, prompt + " more", 77)


def test_bert_wordpiece_offsets(bert_tokenizer):
    assert leading_specials(bert_tokenizer) == 1  # [CLS]
    located = locate_subject(bert_tokenizer, "a photo of {}", "wendy's dog", "wendy's", 64)
    tokens = bert_tokenizer.convert_ids_to_tokens(bert_tokenizer(located.text)["input_ids"])
    assert tokens[: located.index + 1] == ["[CLS]", "a", "photo", "of", "wendy", "'", "s"]
