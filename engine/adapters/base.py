"""The encoder-family interface the ReFACT algorithm is written against.

An adapter names the editable fc2 matrix of each layer and splits the encoder's forward pass at
that matrix, so the algorithm can read keys (fc2 inputs), values (fc2 outputs) and resume the
forward from a cached layer state after adding delta to one layer's MLP output.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch

from engine.errors import TokenizationError
from engine.hashing import hash_named_tensors
from engine.readout import FINAL, Readout


@dataclass
class LayerState:
    """The forward pass of one batch, stopped at layer ``layer``'s fc2.

    ``key`` is fc2's input (B, T, key_size); ``mlp_out`` is fc2's output including its bias
    (B, T, hidden) or None when the pass stopped at the key; ``residual`` is what the adapter
    combines ``mlp_out`` with to finish the layer; ``mask`` is the model's own attention mask.
    """

    batch: dict[str, torch.Tensor]
    layer: int
    mask: Any
    residual: torch.Tensor
    key: torch.Tensor
    mlp_out: torch.Tensor | None
    taps: dict[int, torch.Tensor] | None = None  # readout-tap layer outputs below ``layer`` (unaffected by delta)


def _sample_sum(t: torch.Tensor) -> float:
    flat = t.detach().reshape(-1)
    stride = max(1, flat.numel() // 65536)
    return float(flat[::stride].sum(dtype=torch.float64))


def add_at_positions(values: torch.Tensor, index: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``values`` (B, T, H) with ``delta`` added at (b, index[b]) for every row b; out of place.

    ``delta`` is (H) - one shift for every row - or (B, H), one shift per row (the batch contract).
    """
    rows = torch.arange(values.shape[0], device=values.device)
    add = delta.to(values.dtype).expand(values.shape[0], -1)
    return values.index_put((rows, index.to(values.device)), add, accumulate=True)


class EncoderAdapter(ABC):
    """One text-encoder family (CLIP, BERT) seen as a stack of layers with an MLP key-value memory."""

    family: str = ""
    normalized_features: bool = False
    readout: Readout = FINAL  # what ``read`` returns; set per encoder slot (engine.readout)
    readouts: tuple[str, ...] = ("final",)  # readout kinds this family supports

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self._hash_memo: dict[int, tuple[tuple, str]] = {}

    def set_readout(self, readout: Readout) -> None:
        """Use ``readout`` for every feature this adapter computes (ReadoutError if unsupported)."""
        from engine.readout import ReadoutError

        if readout.kind not in self.readouts:
            raise ReadoutError(
                f"readout {readout.kind!r} does not fit a {self.family} encoder; use {', '.join(self.readouts)}"
            )
        if min(readout.taps(self.num_layers)) < 0 and readout.kind != "hidden":
            raise ReadoutError(f"readout {readout.kind!r} needs at least 2 layers; this encoder has {self.num_layers}")
        self.readout = readout

    # ----- structure -------------------------------------------------------------------------
    @abstractmethod
    def layers(self) -> Sequence[torch.nn.Module]:
        """The encoder's layer stack, in order."""

    @abstractmethod
    def fc2(self, layer: int) -> torch.nn.Linear:
        """The editable matrix W (out x in) of ``layer``."""

    @abstractmethod
    def mlp(self, layer: int) -> torch.nn.Module:
        """The module whose output gets delta (before the residual add)."""

    @abstractmethod
    def upstream_modules(self, layer: int) -> list[tuple[str, torch.nn.Module]]:
        """(name, module) for every module whose weights feed the fc2 input of ``layer``."""

    @property
    def num_layers(self) -> int:
        return len(self.layers())

    @property
    @abstractmethod
    def max_length(self) -> int:
        """Longest token sequence the encoder accepts (special tokens included)."""

    @property
    def hidden_size(self) -> int:
        return self.fc2(0).out_features

    @property
    def key_size(self) -> int:
        return self.fc2(0).in_features

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def fixed_length(self) -> int | None:
        """Length every input is padded to (T5 in a pipeline), or None to pad to the longest text."""
        return None

    @property
    def tokenization_mode(self) -> str:
        """How inputs are fed (part of the second-moment cache key)."""
        return "longest"

    def taps(self) -> tuple[int, ...]:
        """Layers whose outputs the readout needs."""
        return self.readout.taps(self.num_layers)

    @property
    def last_editable(self) -> int:
        """Deepest layer whose edit reaches the readout (see ``Readout.last_editable``)."""
        return self.readout.last_editable(self.num_layers)

    def check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer {layer} does not exist; this encoder has layers 0..{self.num_layers - 1}")

    def fc2_name(self, layer: int) -> str:
        """Dotted name of fc2 inside ``self.model`` (e.g. ``encoder.layers.7.mlp.fc2``)."""
        target = self.fc2(layer)
        for name, module in self.model.named_modules():
            if module is target:
                return name
        raise LookupError(f"fc2 of layer {layer} is not a submodule of the model")

    # ----- forward pieces (family specific) ----------------------------------------------------
    @abstractmethod
    def embed(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        """Embedding output and the attention mask object the model passes to its layers."""

    @abstractmethod
    def run_layer(self, layer: int, hidden: torch.Tensor, mask: Any) -> torch.Tensor:
        """One whole layer, exactly as the model runs it."""

    @abstractmethod
    def split_layer(self, layer: int, hidden: torch.Tensor, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``layer`` up to fc2's input; return (residual, key)."""

    @abstractmethod
    def finish_layer(self, layer: int, residual: torch.Tensor, mlp_out: torch.Tensor) -> torch.Tensor:
        """Combine the (possibly shifted) fc2 output with the residual into the layer's output."""

    @abstractmethod
    def head(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Last hidden state -> one pooled feature per row (B, D)."""

    def read(self, outputs: dict[int, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The readout feature (B, D) from the tap layers' outputs; families with other readouts override."""
        return self.head(outputs[self.num_layers - 1], batch)

    # ----- generic forward ---------------------------------------------------------------------
    def prefix(self, batch: dict[str, torch.Tensor], layer: int, *, with_output: bool = True) -> LayerState:
        """Run layers 0..layer-1 and ``layer`` up to fc2 (through fc2 if ``with_output``)."""
        self.check_layer(layer)
        hidden, mask = self.embed(batch)
        taps, below = self.taps(), {}
        if -1 in taps:
            below[-1] = hidden
        for i in range(layer):
            hidden = self.run_layer(i, hidden, mask)
            if i in taps:
                below[i] = hidden
        residual, key = self.split_layer(layer, hidden, mask)
        mlp_out = self.fc2(layer)(key) if with_output else None
        return LayerState(batch=batch, layer=layer, mask=mask, residual=residual, key=key, mlp_out=mlp_out,
                          taps=below)

    def suffix(self, state: LayerState, mlp_out: torch.Tensor) -> torch.Tensor:
        """Finish layer ``state.layer`` with ``mlp_out``, run the later layers the readout needs, read it."""
        taps = self.taps()
        outputs = dict(state.taps or {})
        hidden = self.finish_layer(state.layer, state.residual, mlp_out)
        if state.layer in taps:
            outputs[state.layer] = hidden
        for i in range(state.layer + 1, max(taps) + 1):
            hidden = self.run_layer(i, hidden, state.mask)
            if i in taps:
                outputs[i] = hidden
        return self.read(outputs, state.batch)

    def stepper(self, state: LayerState, index: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """features(delta) for the batch of ``state``, with delta added to layer ``state.layer``'s
        MLP output at position ``index[b]`` of each row b. Families may override it with a
        cheaper, mathematically identical computation.

        Per-row contract (public, every family): ``delta`` is either (H), the same shift for every
        row, or (B, H), row b shifted by ``delta[b]``; a batch of many requests passes one
        request's delta per row (engine.methods.refact.values)."""

        def features(delta: torch.Tensor) -> torch.Tensor:
            return self.suffix(state, add_at_positions(state.mlp_out, index, delta))

        return features

    def pooled(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Readout feature of the full forward (what the loss compares)."""
        hidden, mask = self.embed(batch)
        taps = self.taps()
        outputs = {-1: hidden} if -1 in taps else {}
        for i in range(max(taps) + 1):
            hidden = self.run_layer(i, hidden, mask)
            if i in taps:
                outputs[i] = hidden
        return self.read(outputs, batch)

    @torch.no_grad()
    def encode(self, tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
        """Pooled features of ``texts`` as one padded batch, without gradient."""
        return self.pooled(self.tokenize(tokenizer, texts))

    # ----- tokens ------------------------------------------------------------------------------
    def tokenize(self, tokenizer: Any, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Pad to the longest text; raise TokenizationError instead of truncating."""
        texts = list(texts)
        enc = tokenizer(texts, padding=True, truncation=False, return_tensors="pt")
        lengths = enc["attention_mask"].sum(dim=1)
        longest = int(lengths.argmax())
        if int(lengths[longest]) > self.max_length:
            raise TokenizationError(
                f"text {texts[longest][:60]!r} is {int(lengths[longest])} tokens, more than the encoder's "
                f"{self.max_length}; shorten it"
            )
        keep = ("input_ids", "attention_mask", "token_type_ids")
        return {k: v.to(self.device) for k, v in enc.items() if k in keep}

    # ----- provenance --------------------------------------------------------------------------
    def _upstream_tensors(self, layer: int) -> Iterable[tuple[str, torch.Tensor]]:
        for prefix, module in self.upstream_modules(layer):
            for name, tensor in module.state_dict(keep_vars=True).items():
                yield f"{prefix}.{name}", tensor

    def upstream_hash(self, layer: int) -> str:
        """sha256 of every weight that feeds fc2's input at ``layer``.

        Memoised on each tensor's storage pointer, version counter and a strided sample of its
        values: in-place edits through the parameter bump the version counter, and the sample
        also catches dense edits made through ``.data`` (which bypasses it), at a tiny fraction
        of the cost of re-hashing.
        """
        self.check_layer(layer)
        items = list(self._upstream_tensors(layer))
        with torch.no_grad():
            signature = tuple((n, t.data_ptr(), t._version, tuple(t.shape), _sample_sum(t)) for n, t in items)
        memo = self._hash_memo.get(layer)
        if memo is not None and memo[0] == signature:
            return memo[1]
        digest = hash_named_tensors((n, t.detach()) for n, t in items)
        self._hash_memo[layer] = (signature, digest)
        return digest
