"""Encoder slots: the text encoders of one pipeline, each with its tokenizer, adapter and readout.

A slot is named by its pipeline attribute (``text_encoder``, ``text_encoder_2``, ``text_encoder_3``)
and has the attributes a single-encoder model has (``.adapter``, ``.tokenizer``, ``.text_encoder``,
``.base_fc2``), so every engine function written for one encoder (``compute_edit``, the second-moment
store, ``base_weights``) takes a slot as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from engine.errors import DeltaIntegrityError
from engine.hashing import module_hash
from engine.methods.refact.hparams import PAPER_DEPTH, HParamsError
from engine.readout import Readout
from engine.tokens import PLAIN, PromptTemplate

# Pipeline family -> its encoder slots, in the order encode_prompt uses them.
FAMILY_SLOTS: dict[str, tuple[str, ...]] = {
    "sd1": ("text_encoder",),
    "sd2": ("text_encoder",),
    "sdxl": ("text_encoder", "text_encoder_2"),
    "sd3": ("text_encoder", "text_encoder_2", "text_encoder_3"),
    "flux": ("text_encoder", "text_encoder_2"),
    "z-image": ("text_encoder",),
    "flux2-klein": ("text_encoder",),
    "lumina2": ("text_encoder",),
    "pixart-sigma": ("text_encoder",),
    "chroma": ("text_encoder",),
    "qwen-image": ("text_encoder",),
    "sana": ("text_encoder",),
    "cogview4": ("text_encoder",),
    "flux2": ("text_encoder",),
    "hidream": ("text_encoder", "text_encoder_2", "text_encoder_3", "text_encoder_4"),
}
# Default edit depth, as a fraction of an encoder's layers. The paper edits layer 7 of SD1's 12. For
# SDXL's encoders (penultimate readouts) the one published text-encoder editor, EMCID, edits CLIP-L
# layers 8-10 and bigG layers 26-30: the defaults are the centres of those ranges (9 of 12, 28 of 32).
# SD3 carries the same two CLIP encoders with penultimate readouts. Every other slot: the paper's depth
# (PAPER_DEPTH, kept in hparams so torch-free callers such as `queue add` share it).
FAMILY_DEPTHS: dict[tuple[str, str], float] = {
    ("sdxl", "text_encoder"): 9 / 12,
    ("sdxl", "text_encoder_2"): 28 / 32,
    ("sd3", "text_encoder"): 9 / 12,
    ("sd3", "text_encoder_2"): 28 / 32,
}
# Lumina 2's default system prompt (diffusers 0.42.1 Lumina2Pipeline.system_prompt; tests compare).
LUMINA2_SYSTEM_PROMPT = (
    "You are an assistant designed to generate superior images with the superior degree of image-text "
    "alignment based on textual prompts or user prompts."
)

# FLUX.2 [dev]'s system turn (diffusers 0.42.1 flux2/system_messages.py SYSTEM_MESSAGE; tests compare).
FLUX2_SYSTEM_MESSAGE = (
    "You are an AI that reasons about image descriptions. You give structured responses focusing on object "
    "relationships, object\nattribution and actions without speculation."
)

# Sana's instruction, joined to the (lowercased) prompt by SanaPipeline.__call__'s default
# complex_human_instruction (diffusers 0.42.1; tests compare with the signature's default).
SANA_INSTRUCTION = "\n".join((
    "Given a user prompt, generate an 'Enhanced prompt' that provides detailed visual descriptions suitable for "
    "image generation. Evaluate the level of detail in the user prompt:",
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial "
    "relationships to create vivid and concrete scenes.",
    "- If the prompt is already detailed, refine and enhance the existing details slightly without overcomplicating.",
    "Here are examples of how to transform or refine prompts:",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, sleeping "
    "peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.",
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street "
    "lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass "
    "skyscrapers.",
    "Please generate only the enhanced description for the prompt below and avoid including any additional "
    "commentary or evaluations:",
    "User Prompt: ",
))

# Qwen-Image's template (QwenImagePipeline.prompt_template_encode; its first 34 tokens are dropped).
QWEN_IMAGE_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)


@dataclass(frozen=True)
class SlotInput:
    """How a family's ``encode_prompt`` feeds one encoder (diffusers 0.42.1).

    ``max_length``: T5's fixed padding, or a decoder LM's token limit after templating (None: the
    encoder's own); ``use_mask``: whether the encoder sees the attention mask; ``template``: the text
    put around the prompt (chat template, system prompt, lowercasing, CogView4's left padding);
    ``window``: Sana's prompt window (see ``resolve``; ``max_length`` is then its max_sequence_length).
    """

    max_length: int | None = None
    use_mask: bool = False
    template: PromptTemplate = PLAIN
    window: bool = False

    def resolve(self, tokenizer: Any, readout: Readout) -> tuple[int | None, Readout]:
        """(token limit after templating, ``readout`` with the template tokens the denoiser never reads).

        Sana (``window``): the pipeline pads instruction + prompt to n + max_length - 2 tokens, n being the
        instruction's own count as ``tokenizer.encode`` gives it (BOS included), and hands the denoiser the
        first token and the last max_length - 1 (``select_index``): positions 1..n-2 are never read (with
        Gemma's tokenizer the instruction's trailing space merges into the prompt's first word, so what is
        read is BOS plus the prompt). A readout with its own ``drop`` keeps it. Other slots: unchanged.
        """
        if not self.window or self.max_length is None:
            return self.max_length, readout
        n = len(tokenizer.encode(self.template.prefix))
        limit = n + self.max_length - 2
        if readout.kind == "hidden" and not readout.drop:
            readout = replace(readout, drop=limit - (self.max_length - 1) - 1, drop_from=1)
        return limit, readout


SLOT_INPUTS: dict[tuple[str, str], SlotInput] = {
    ("sd3", "text_encoder_3"): SlotInput(256),
    ("flux", "text_encoder_2"): SlotInput(512),
    ("pixart-sigma", "text_encoder"): SlotInput(300, True, PromptTemplate(lowercase=True)),
    ("chroma", "text_encoder"): SlotInput(512, True),
    ("z-image", "text_encoder"): SlotInput(512, True, PromptTemplate(chat=True, chat_kwargs={"enable_thinking": True})),
    ("flux2-klein", "text_encoder"): SlotInput(
        512, True, PromptTemplate(chat=True, chat_kwargs={"enable_thinking": False})
    ),
    ("lumina2", "text_encoder"): SlotInput(256, True, PromptTemplate(prefix=LUMINA2_SYSTEM_PROMPT + " <Prompt Start> ")),
    ("qwen-image", "text_encoder"): SlotInput(1024 + 34, True, PromptTemplate(wrap=QWEN_IMAGE_TEMPLATE)),
    # Sana: lowercased prompt after the instruction, right-padded under the mask, BOS + the 299-token window.
    ("sana", "text_encoder"): SlotInput(300, True, PromptTemplate(prefix=SANA_INSTRUCTION, lowercase=True), window=True),
    # CogView4: no template, pad tokens prepended to a multiple of 16, no mask, at most 1024 tokens.
    ("cogview4", "text_encoder"): SlotInput(1024, False, PromptTemplate(pad_multiple=16)),
    # FLUX.2: system + user turn, content as typed parts, no generation prompt, padded to 512 under the mask.
    ("flux2", "text_encoder"): SlotInput(
        512, True, PromptTemplate(chat=True, system=FLUX2_SYSTEM_MESSAGE, parts=True, generation_prompt=False)
    ),
    # HiDream: T5 and Llama padded to max_sequence_length 128 with their masks (the CLIPs read plain, at EOS).
    ("hidream", "text_encoder_3"): SlotInput(128, True),
    ("hidream", "text_encoder_4"): SlotInput(128, True),
}


def slot_input(family: str | None, slot: str) -> SlotInput:
    """A slot's input format; a plain encoder folder (no family) is masked and untemplated."""
    if family is None:
        return SlotInput(use_mask=True)
    return SLOT_INPUTS.get((family, slot), SlotInput())


def tokenizer_attr(slot: str) -> str:
    """The pipeline attribute of a slot's tokenizer (text_encoder_2 -> tokenizer_2)."""
    return slot.replace("text_encoder", "tokenizer")


@dataclass
class EncoderSlot:
    """One text encoder of a model: what an edit of it needs."""

    name: str
    text_encoder: torch.nn.Module
    tokenizer: Any
    adapter: Any  # EncoderAdapter (its readout is this slot's)
    base_fc2: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    default_depth: float = PAPER_DEPTH  # see FAMILY_DEPTHS

    @property
    def component(self) -> str:
        """The delta component this slot's updates carry (its pipeline attribute)."""
        return self.name

    @property
    def readout(self) -> Readout:
        return self.adapter.readout

    @property
    def family(self) -> str:
        """Encoder family: "clip", "t5" or "bert"."""
        return self.adapter.family

    @property
    def num_layers(self) -> int:
        return int(self.adapter.num_layers)

    @property
    def max_length(self) -> int:
        return int(self.adapter.max_length)

    @property
    def editable_layers(self) -> range:
        """Layers whose edit reaches this slot's readout."""
        return range(0, self.adapter.last_editable + 1)

    def check_layer(self, layer: int) -> None:
        """HParamsError naming the slot and its editable range unless ``layer`` is in it."""
        check_slot_layer(self.adapter, layer, self.name)

    def default_layer(self) -> int:
        """The layer edited when none is given: this slot's default depth scaled to its encoder."""
        return default_layer_for(self.adapter, self.default_depth)

    def component_module(self, name: str) -> torch.nn.Module:
        """This slot's encoder when ``name`` is the slot (so a slot's own delta applies to it)."""
        if name != self.name:
            raise DeltaIntegrityError(f"delta edits {name!r}, not the encoder slot {self.name!r}")
        return self.text_encoder

    def encoder_hash(self) -> str:
        """sha256 of the encoder's current state dict."""
        return module_hash(self.text_encoder)

    def fc2_modules(self) -> dict[str, torch.nn.Linear]:
        """Every layer's editable matrix, keyed by its module name inside the encoder."""
        wanted = [self.adapter.fc2(i) for i in range(self.adapter.num_layers)]
        names = {id(m): n for n, m in self.text_encoder.named_modules()}
        return {names[id(m)]: m for m in wanted}

    def snapshot_fc2(self) -> dict[str, torch.Tensor]:
        """CPU copies of all editable weights, keyed "<module>.weight"."""
        return {f"{n}.weight": m.weight.detach().to("cpu", copy=True) for n, m in self.fc2_modules().items()}

    @torch.no_grad()
    def restore_fc2(self, snapshot: dict[str, torch.Tensor]) -> None:
        """Copy a ``snapshot_fc2()`` back in place (the parameter objects stay the same)."""
        current = {f"{n}.weight": m.weight for n, m in self.fc2_modules().items()}
        if set(snapshot) != set(current):
            raise DeltaIntegrityError(
                f"the weight snapshot does not belong to {self.name} (different layers); take it from the same model"
            )
        for name, weight in current.items():
            saved = snapshot[name]
            if saved.shape != weight.shape:
                raise DeltaIntegrityError(
                    f"{self.name} snapshot {name} has shape {tuple(saved.shape)}, the model {tuple(weight.shape)}; "
                    "take it from the same model"
                )
            weight.copy_(saved.to(device=weight.device, dtype=weight.dtype))

    def restore_base(self) -> None:
        """Put every editable weight of this slot back to what was loaded."""
        self.restore_fc2(self.base_fc2)


def check_slot_layer(adapter: Any, layer: int, slot: str = "text_encoder") -> None:
    """HParamsError unless ``layer`` reaches the adapter's readout."""
    last = adapter.last_editable
    if not 0 <= layer <= last:
        cut = ""
        if last < adapter.num_layers - 1:
            cut = f" (layers after {last} cannot reach its {adapter.readout.kind} readout)"
        raise HParamsError(
            f"layer {layer} is out of range for {slot} (editable: layers 0..{last} of {adapter.num_layers}{cut}); "
            f"pick one with --layer {slot}=N"
        )


def default_layer_for(adapter: Any, depth: float = PAPER_DEPTH) -> int:
    """The layer at relative ``depth`` (default: the paper's 7 of 12), kept inside the editable range."""
    n = int(adapter.num_layers)
    return max(0, min(round(depth * n), adapter.last_editable))


def default_depth(family: str | None, slot: str) -> float:
    """A slot's default edit depth in a ``family`` pipeline (FAMILY_DEPTHS, else the paper's)."""
    return FAMILY_DEPTHS.get((family or "", slot), PAPER_DEPTH)


def keep_editable_fp32(adapter: Any) -> None:
    """Make every editable matrix float32 when the encoder is in fp16/bf16: a rank-one update of a
    large bf16 matrix rounds away. T5's feed-forward casts its input to ``wo``'s dtype itself
    (transformers already keeps ``wo`` fp32 under fp16); a decoder LM's ``down_proj`` gets hooks that
    cast its input up and its output back, so the model's own forward still runs in its dtype. CLIP's
    fc2 must match its input's dtype and stays as loaded."""
    if adapter.family not in ("t5", "llm"):
        return
    for i in range(adapter.num_layers):
        linear = adapter.fc2(i)
        if linear.weight.dtype in (torch.float16, torch.bfloat16):
            linear.weight = torch.nn.Parameter(linear.weight.detach().float(), requires_grad=False)
            if adapter.family == "llm":
                _cast_around(linear)


def _cast_around(linear: torch.nn.Linear) -> None:
    seen: list[torch.dtype] = []

    def cast_in(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        seen.append(args[0].dtype)
        return (args[0].to(module.weight.dtype), *args[1:])

    def cast_out(_module: torch.nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
        return output.to(seen.pop())

    linear.register_forward_pre_hook(cast_in)
    linear.register_forward_hook(cast_out)


def combined_hash(hashes: dict[str, str]) -> str:
    """One hash for several slots' weights; a single slot's hash is returned unchanged (SD1 compat)."""
    if len(hashes) == 1:
        return next(iter(hashes.values()))
    from hashlib import sha256

    return sha256("|".join(f"{k}={v}" for k, v in hashes.items()).encode()).hexdigest()


__all__ = [
    "EncoderSlot", "FAMILY_SLOTS", "SLOT_INPUTS", "SlotInput", "slot_input", "tokenizer_attr", "check_slot_layer", "default_depth", "default_layer_for",
    "keep_editable_fp32", "combined_hash",
]
