"""Small BPE tokenizers for the decoder-LM encoders of 2026 pipelines, built offline.

Each is trained with ``tokenizers`` on the shipped caption corpus, using the normalizer and
pre-tokenizer of the real transformers class (so word splitting behaves like the real one), and
carries the special tokens and chat template its pipeline's ``encode_prompt`` relies on. Ids are
not the real models' ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from engine.builder.vocab import _default_corpus

_BPE_SIZE = 1500

# Qwen2/3 chat format for one user turn; Qwen3's generation prompt closes an empty think block when
# thinking is off (what FLUX.2 klein asks for; Z-Image asks for thinking on and gets none).
QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}"
    "{%- endif -%}"
)
GEMMA_CHAT_TEMPLATE = (
    "{{- bos_token -}}{%- for message in messages -%}"
    "{{- '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' "
    "+ message['content'] + '<end_of_turn>\\n' -}}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class LLMTokenizerStyle:
    """The transformers class a family's tokenizer is saved as, its special tokens and chat template."""

    class_name: str  # Qwen2Tokenizer | GemmaTokenizer | PreTrainedTokenizerFast (GLM-4)
    specials: dict[str, object]  # constructor kwargs (bos/eos/pad/unk...)
    extra: tuple[str, ...]  # further special tokens (chat markers)
    chat_template: str | None
    padding_side: str = "right"
    prefix: tuple[str, ...] = ()  # tokens a post-processor puts before every input (GLM-4's [gMASK]<sop>)


STYLES = {
    "qwen": LLMTokenizerStyle(
        "Qwen2Tokenizer",
        {"unk_token": "<|endoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"),
        QWEN_CHAT_TEMPLATE,
    ),
    "gemma": LLMTokenizerStyle(
        "GemmaTokenizer",
        {"unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "mask_token": "<mask>",
         "add_bos_token": True},
        ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"),
        GEMMA_CHAT_TEMPLATE,
    ),
    # GLM-4 (CogView4): byte-level BPE like Qwen's, a fast tokenizer that starts every input with
    # [gMASK]<sop> and pads on the left; CogView4 feeds plain prompts, so no chat template.
    "glm": LLMTokenizerStyle(
        "PreTrainedTokenizerFast",
        {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
        ("<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>", "<|assistant|>",
         "<|observation|>"),
        None, padding_side="left", prefix=("[gMASK]", "<sop>"),
    ),
}


@lru_cache(maxsize=4)
def _trained(class_name: str, specials: tuple[str, ...], corpus: Path | None):
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    reference = getattr(transformers, class_name)()._tokenizer  # the real class's text pipeline
    tok = Tokenizer(models.BPE(unk_token=None if class_name == "Qwen2Tokenizer" else "<unk>"))
    tok.normalizer = reference.normalizer
    tok.pre_tokenizer = reference.pre_tokenizer
    if class_name != "Qwen2Tokenizer":  # train on words ("▁word"), so no piece spans a space
        tok.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    byte_level = class_name == "Qwen2Tokenizer"
    alphabet = pre_tokenizers.ByteLevel.alphabet() if byte_level else []
    if not byte_level:  # SentencePiece-style BPE: byte-fallback pieces first, as Gemma's vocabulary has
        specials = specials + tuple(f"<0x{b:02X}>" for b in range(256))
    trainer = trainers.BpeTrainer(vocab_size=_BPE_SIZE, special_tokens=list(specials), initial_alphabet=alphabet,
                                  show_progress=False)
    lines = (corpus or _default_corpus()).read_text(encoding="utf-8").splitlines()
    tok.train_from_iterator(lines, trainer)
    import json

    model = json.loads(tok.to_str())["model"]
    merges = tuple(tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"])
    vocab = tuple(sorted(model["vocab"].items(), key=lambda kv: kv[1]))
    return vocab, merges


def build_llm_tokenizer(style: str, max_length: int = 512, corpus: Path | None = None):
    """A tokenizer of ``style`` (``qwen`` or ``gemma``) trained on the caption corpus, deterministic."""
    import transformers

    spec = STYLES[style]
    trained_as = "Qwen2Tokenizer" if spec.prefix else spec.class_name
    vocab, merges = _trained(trained_as, spec.extra, corpus)
    cls = getattr(transformers, trained_as)
    tokenizer = cls(vocab=dict(vocab), merges=list(merges), padding_side=spec.padding_side, **spec.specials)
    tokenizer.add_special_tokens({"additional_special_tokens": [t for t in spec.extra if t not in spec.specials.values()]})
    if spec.prefix:
        tokenizer = _with_prefix(tokenizer, spec)
    tokenizer.model_max_length = max_length
    tokenizer.padding_side = spec.padding_side
    if spec.chat_template:
        tokenizer.chat_template = spec.chat_template
    return tokenizer


def _with_prefix(tokenizer, spec: LLMTokenizerStyle):
    """A fast tokenizer over ``tokenizer``'s vocabulary whose post-processor starts every input with ``spec.prefix``."""
    import transformers
    from tokenizers import processors

    backend = tokenizer._tokenizer
    lead = " ".join(f"{t}:0" for t in spec.prefix)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{lead} $A:0", pair=f"{lead} $A:0 $B:1", special_tokens=[(t, backend.token_to_id(t)) for t in spec.prefix]
    )
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, padding_side=spec.padding_side, **spec.specials)
