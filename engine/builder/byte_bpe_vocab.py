"""Byte-level BPE tokenizers that put a BOS before every input, built offline: Mistral's (FLUX.2 [dev],
inside a ``PixtralProcessor``) and Llama 3.1's (HiDream's ``tokenizer_4``).

Both are trained on the shipped caption corpus with Qwen2's byte-level text pipeline (the GPT-style split
the real tekken and Llama-3 tokenizers also use), saved as transformers' generic fast tokenizer with the
real models' special-token names. Ids are not the real models' ids.
"""

from __future__ import annotations

from pathlib import Path

from engine.builder.llm_vocab import _trained

MISTRAL_SPECIALS = (
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]", "<pad>",
    "[IMG_BREAK]", "[IMG_END]",
)
LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>")

# Mistral-Small-3.1's turn format for what FLUX.2 sends: a system turn and a user turn whose content is a list
# of typed parts (a plain string is accepted too), no generation prompt.
MISTRAL_CHAT_TEMPLATE = (
    "{{- bos_token -}}{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set text = message['content'] -%}"
    "{%- else -%}{%- set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'system' -%}{{- '[SYSTEM_PROMPT]' + text + '[/SYSTEM_PROMPT]' -}}"
    "{%- elif message['role'] == 'user' -%}{{- '[INST]' + text + '[/INST]' -}}"
    "{%- else -%}{{- text + eos_token -}}{%- endif -%}{%- endfor -%}"
)


def _fast(specials: tuple[str, ...], bos: str, eos: str, pad: str, unk: str | None, max_length: int, corpus: Path | None):
    import transformers
    from tokenizers import processors

    vocab, merges = _trained("Qwen2Tokenizer", specials, corpus)
    inner = transformers.Qwen2Tokenizer(vocab=dict(vocab), merges=list(merges))._tokenizer
    ids = dict(vocab)
    inner.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, ids[bos])]
    )
    kwargs = dict(bos_token=bos, eos_token=eos, pad_token=pad, model_max_length=max_length, padding_side="right")
    if unk:
        kwargs["unk_token"] = unk
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=inner, **kwargs)
    named = {bos, eos, pad, unk}
    tokenizer.add_special_tokens({"additional_special_tokens": [t for t in specials if t not in named]})
    return tokenizer


def build_mistral_processor(max_length: int = 512, corpus: Path | None = None):
    """FLUX.2 [dev]'s ``tokenizer``: a ``PixtralProcessor`` around a Mistral-style byte BPE with its chat template."""
    import transformers

    tokenizer = _fast(MISTRAL_SPECIALS, "<s>", "</s>", "<pad>", "<unk>", max_length, corpus)
    tokenizer.chat_template = MISTRAL_CHAT_TEMPLATE
    images = transformers.PixtralImageProcessor(size={"longest_edge": 32}, patch_size=16)
    return transformers.PixtralProcessor(image_processor=images, tokenizer=tokenizer, patch_size=16,
                                         spatial_merge_size=1, chat_template=MISTRAL_CHAT_TEMPLATE)


def build_llama3_tokenizer(max_length: int = 128, corpus: Path | None = None):
    """HiDream's ``tokenizer_4``: a Llama-3.1-style byte BPE (BOS ``<|begin_of_text|>``, padding with EOS as the
    pipeline sets it)."""
    return _fast(LLAMA3_SPECIALS, "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>", None, max_length, corpus)
