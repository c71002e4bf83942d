"""Readouts: which feature of an encoder's forward the v* loss compares, per encoder slot.

The loss must look at what the denoiser reads (diffusers 0.42.1 ``encode_prompt``), not at whatever
the encoder's own head returns. A readout names that feature; the adapter computes it from the
outputs of a few layers (its *taps*). A layer after the last tap cannot change the feature, so it is
not editable under that readout.

Kinds:
- ``final``: the encoder's own pooled feature (CLIP: final LN at EOS, then ``text_projection`` when the
  model has one; BERT: its pooling). SD1/SD2 and plain text encoders.
- ``pooler``: CLIP final LN at EOS without the projection (``pooler_output``; FLUX's CLIP-L).
- ``penultimate``: ``hidden_states[-2]`` at EOS, no final LN (SDXL ``text_encoder``).
- ``penultimate+embeds``: ``hidden_states[-2]`` at EOS joined with ``weight * text_embeds``
  (SDXL ``text_encoder_2``, both SD3 CLIP encoders).
- ``mean``: mean of ``last_hidden_state`` over the prompt's own tokens (T5 in SD3/FLUX).
- ``hidden``: decoder LMs. ``hidden_states[k]`` for each k in ``layers`` (diffusers' numbering: 0 the
  embeddings, k the output of block k-1, the last one after the final norm; negatives count from the
  end), stacked on channels as FLUX.2 and HiDream stack them, then averaged over the tokens the
  denoiser reads: the prompt's own (padding excluded) after the template's first ``drop`` tokens
  (Qwen-Image drops 34), or the ``drop`` tokens from position ``drop_from`` on (Sana keeps BOS and
  drops its instruction's tokens after it: diffusers' ``select_index``, BOS plus the last
  ``max_sequence_length - 1`` tokens of an input padded to the instruction's length plus
  ``max_sequence_length - 2``; the count depends on the tokenizer and is set at load,
  ``engine.slots.SlotInput.resolve``). Positions count from the first real token, so left padding
  (CogView4) never shifts them. Spec: ``hidden:9,18,27``, ``hidden:-1/drop=34`` (= ``drop=0:34``) or
  ``hidden:-1/drop=1:57`` (positions 1..56 unread); ``hidden:1..-1`` reads every
  index from 1 to the last (HiDream's Llama), each tap pooled on its own before stacking.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("final", "pooler", "penultimate", "penultimate+embeds", "mean", "hidden")


class ReadoutError(ValueError):
    """A readout spec is malformed or does not fit the encoder."""


@dataclass(frozen=True)
class Readout:
    """One slot's readout: ``kind`` (see module docstring) and the weight of ``text_embeds``."""

    kind: str = "final"
    embeds_weight: float = 1.0
    layers: tuple[int, ...] = ()  # ``hidden``: the hidden_states indices read
    drop: int = 0  # ``hidden``: template tokens the denoiser never sees (from position ``drop_from``)
    drop_from: int = 0  # ``hidden``: the first of them (0: the leading ones; Sana 1: BOS is read)
    span: bool = False  # ``hidden``: ``layers`` is (first, last), every hidden_states index between read (HiDream)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ReadoutError(f"unknown readout {self.kind!r}; use one of {', '.join(KINDS)}")
        if not self.embeds_weight >= 0:
            raise ReadoutError(f"readout weight must be >= 0, got {self.embeds_weight}")
        if (self.kind == "hidden") != bool(self.layers):
            raise ReadoutError("a hidden readout names its hidden_states layers (e.g. 'hidden:-2'); other kinds none")
        if self.drop < 0 or (self.drop and self.kind != "hidden"):
            raise ReadoutError(f"drop={self.drop} fits only a hidden readout, as a count >= 0")
        if self.drop_from < 0 or (self.drop_from and not self.drop):
            raise ReadoutError(f"drop_from={self.drop_from} needs a drop count and must be >= 0")
        if self.span and len(self.layers) != 2:
            raise ReadoutError("a hidden span names its first and last hidden_states index (e.g. 'hidden:1..-1')")

    def taps(self, num_layers: int) -> tuple[int, ...]:
        """Layers whose outputs the feature is computed from (-1 is the embedding output)."""
        last = num_layers - 1
        if self.kind == "hidden":
            taps = []
            for k in self._indices(num_layers):
                index = k if k >= 0 else num_layers + 1 + k  # hidden_states has num_layers + 1 entries
                if not 0 <= index <= num_layers:
                    raise ReadoutError(
                        f"readout hidden_states[{k}] does not exist; this encoder has hidden_states 0..{num_layers}"
                    )
                taps.append(index - 1)
            return tuple(taps)
        if self.kind == "penultimate":
            return (last - 1,)
        if self.kind == "penultimate+embeds":
            return (last - 1, last)
        return (last,)

    def last_editable(self, num_layers: int) -> int:
        """The deepest layer whose edit can reach the feature.

        An edit adds to the MLP output at the subject's token only. A readout taken at EOS sees that
        change only through a later layer's attention, so its own tap layer is out of reach; a
        ``mean`` readout averages the subject's token itself, so the tap layer still counts.
        ``final`` is read at EOS on CLIP; an adapter whose pooling averages every token (BERT mean
        pooling) widens its range itself.
        """
        deepest = max(self.taps(num_layers))
        return deepest if self.kind in ("mean", "hidden") else deepest - 1

    def _indices(self, num_layers: int) -> tuple[int, ...]:
        """The hidden_states indices read; a span is expanded on this encoder (negatives count from the end)."""
        if not self.span:
            return self.layers
        first, last = (k if k >= 0 else num_layers + 1 + k for k in self.layers)
        if first > last:
            raise ReadoutError(f"readout span {self.spec()!r} is empty on an encoder with hidden_states 0..{num_layers}")
        return tuple(range(first, last + 1))

    def spec(self) -> str:
        """Text form, parsed back by ``parse``: ``kind``, ``penultimate+embeds:<weight>`` or ``hidden:<k,..>[/drop=N]``."""
        if self.kind == "hidden":
            drop = f"/drop={self.drop}" if self.drop else ""
            if self.drop_from:
                drop = f"/drop={self.drop_from}:{self.drop_from + self.drop}"
            sep = ".." if self.span else ","
            return f"hidden:{sep.join(str(k) for k in self.layers)}{drop}"
        if self.kind == "penultimate+embeds" and self.embeds_weight != 1.0:
            return f"{self.kind}:{self.embeds_weight:g}"
        return self.kind

    @classmethod
    def parse(cls, text: str) -> "Readout":
        kind, _, weight = str(text).strip().partition(":")
        if kind == "hidden":
            layers, _, drop = weight.partition("/drop=")
            try:
                span = ".." in layers
                parts = layers.split("..") if span else layers.split(",")
                start, _, stop = drop.rpartition(":")  # "N" or "start:stop"
                first = int(start or 0)
                return cls("hidden", layers=tuple(int(k) for k in parts), drop=int(stop or 0) - first if stop else 0,
                           drop_from=first, span=span)
            except ValueError:
                raise ReadoutError(f"readout {text!r} is not valid; use e.g. 'hidden:9,18,27' or 'hidden:-1/drop=34'") from None
        try:
            return cls(kind, float(weight) if weight else 1.0)
        except ValueError as exc:
            raise ReadoutError(f"readout {text!r} is not valid ({exc}); use e.g. 'penultimate+embeds:0.5'") from None


FINAL = Readout("final")

# (family, slot) -> readout the denoiser's conditioning implies; unlisted slots use ``final``.
DEFAULT_READOUTS: dict[tuple[str, str], Readout] = {
    ("sdxl", "text_encoder"): Readout("penultimate"),
    ("sdxl", "text_encoder_2"): Readout("penultimate+embeds"),
    ("sd3", "text_encoder"): Readout("penultimate+embeds"),
    ("sd3", "text_encoder_2"): Readout("penultimate+embeds"),
    ("sd3", "text_encoder_3"): Readout("mean"),
    ("flux", "text_encoder"): Readout("pooler"),
    ("flux", "text_encoder_2"): Readout("mean"),
    ("pixart-sigma", "text_encoder"): Readout("mean"),
    ("chroma", "text_encoder"): Readout("mean"),
    ("z-image", "text_encoder"): Readout("hidden", layers=(-2,)),
    ("flux2-klein", "text_encoder"): Readout("hidden", layers=(9, 18, 27)),
    ("lumina2", "text_encoder"): Readout("hidden", layers=(-2,)),
    ("qwen-image", "text_encoder"): Readout("hidden", layers=(-1,), drop=34),
    # Sana: last_hidden_state; BOS plus the prompt window (its drop is set per tokenizer, SlotInput.resolve)
    ("sana", "text_encoder"): Readout("hidden", layers=(-1,)),
    ("cogview4", "text_encoder"): Readout("hidden", layers=(-2,)),
    ("flux2", "text_encoder"): Readout("hidden", layers=(10, 20, 30)),
    # HiDream: every block's output, hidden_states[1:] (the transformer picks one per block, config.llama_layers)
    ("hidream", "text_encoder_4"): Readout("hidden", layers=(1, -1), span=True),
    ("hidream", "text_encoder_3"): Readout("mean"),
}


def default_readout(family: str, slot: str) -> Readout:
    """The readout of ``slot`` in a ``family`` pipeline (``final`` for SD1/SD2 and plain encoders)."""
    return DEFAULT_READOUTS.get((family, slot), FINAL)
