"""The working model of a history: its base model plus the applied deltas 1..head, in order.

Rebuilding from the base (never subtracting deltas) keeps the weights bit-reproducible: the result is
checked against the encoder hash recorded when the head edit was first applied.

Weights-hash policy across dtypes (``refact init/run/eval/bench --dtype``): a recorded hash is the hash
of the weights in memory, in the dtype they were loaded in, and carries that dtype (``<sha256>@bfloat16``;
a bare hash is a load as the files store it, as every hash recorded before dtypes). Hashes of one dtype
are compared as they always were. A load in another dtype than a recorded hash's cannot be compared with
it, so then the base is vouched for by the sha256 of its stored text-encoder files (``files_hash``,
recorded at init, or at the first verified load of an older workspace) and every delta by its own
sha256: a history applied at bf16 rebuilds at fp32 (and back) without a false tamper error, while a
different base file is still refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import DeltaIntegrityError


@dataclass
class ModelState:
    """A loaded model together with the history state it represents."""

    model: Any                  # engine.models.LoadedModel
    history: Any                # store.records.HistoryRow
    base: Any                   # store.records.BaseModelRow
    head_seq: int
    edits: list                 # the applied EditRows 1..head, in order
    base_encoder_hash: str
    weights_hash: str
    dtype: str | None = None    # the dtype it was loaded in (None: as the files store it)


TEXT_COMPONENTS = ("text_encoder", "text_encoder_2", "text_encoder_3", "text_encoder_4")  # every FAMILY_SLOTS name
EDITED_ATTR = "edited_matrices"  # on a LoadedModel: {(component, module)} changed outside the text encoders


DTYPE_TAG = "@"


def tag_hash(digest: str, dtype: str | None) -> str:
    """A weights hash with the dtype it was taken in (bare for a load as the files store it)."""
    return digest if dtype is None else f"{digest}{DTYPE_TAG}{dtype}"


def hash_dtype(recorded: str | None) -> str | None:
    """The dtype a recorded weights hash was taken in (None: as the files store it)."""
    return (recorded or "").partition(DTYPE_TAG)[2] or None


def text_weights_hash(model) -> str:
    """Every encoder slot together (one slot: its encoder hash): the hash of a ReFACT-only history,
    tagged with the model's load dtype (``tag_hash``)."""
    fn = getattr(model, "weights_hash", None)
    return tag_hash(fn() if callable(fn) else model.encoder_hash(), getattr(model, "dtype", None))


def model_weights_hash(model) -> str:
    """The hash recorded for a model's weights: the text encoders (``text_weights_hash``) plus, when
    deltas applied with ``apply_delta`` changed matrices outside them (TIME / UCE edit the UNet's
    cross-attention), those matrices per component. A model without such edits hashes exactly as
    before (SD1 ReFACT histories keep their hashes).

    Only the edited matrices of the UNet are hashed, not the whole UNet: that is every weight a delta
    changes (a different base UNet differs there too) in 0.06 s (TIME's 16 to_v) to 0.14 s (UCE's 32
    to_k/to_v) on SD1, where the full UNet takes 4.8 s at every commit and rebuild."""
    from engine.hashing import hash_named_tensors
    from engine.slots import combined_hash

    edited = sorted(getattr(model, EDITED_ATTR, None) or ())
    text = text_weights_hash(model)
    if not edited:
        return text
    hashes = dict(getattr(model, "weights_hashes", lambda: {"text_encoder": text})())
    from engine.delta import component_module

    for component in dict.fromkeys(c for c, _ in edited):
        root = component_module(model, component)
        hashes[component] = hash_named_tensors(
            (f"{m}.weight", root.get_submodule(m).weight) for c, m in edited if c == component)
    return tag_hash(combined_hash(hashes), getattr(model, "dtype", None))


def edited_outside_text(delta) -> set[tuple[str, str]]:
    """(component, module) of every matrix ``delta`` changes outside the text encoders."""
    return {(u.component, u.module) for u in delta.updates if u.component not in TEXT_COMPONENTS}


def apply_delta(model, delta) -> set[tuple[str, str]]:
    """``delta.apply(model)``, remembering on the model the matrices it changed outside the text
    encoders (so ``model_weights_hash`` covers them); returns the ones that were new (for an undo)."""
    delta.apply(model)
    return note_edited(model, delta)


def note_edited(model, delta) -> set[tuple[str, str]]:
    """Remember on the model the matrices an applied ``delta`` changed outside the text encoders
    (so ``model_weights_hash`` covers them); returns the ones that were new (for ``forget_edited``)."""
    new = edited_outside_text(delta) - set(getattr(model, EDITED_ATTR, None) or ())
    if new:
        setattr(model, EDITED_ATTR, set(getattr(model, EDITED_ATTR, None) or ()) | new)
    return new


def needs_pipeline(deltas) -> bool:
    """True when a delta edits something besides a text encoder (e.g. the UNet)."""
    return any(c not in TEXT_COMPONENTS for d in deltas for c in d.components)


def ensure_pipeline(model) -> None:
    """Give a text-encoder-only LoadedModel of a pipeline folder its pipeline, sharing its encoder."""
    if getattr(model, "pipeline", None) is not None or model.kind != "sd-pipeline":
        return
    from diffusers import DiffusionPipeline  # heavy: only for a history that edits the UNet

    from engine.models import load_dtype_kwargs
    from engine.offline import quiet_hf_logging

    quiet_hf_logging()
    pipe = DiffusionPipeline.from_pretrained(model.path, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                             local_files_only=True, use_safetensors=True,
                                             **load_dtype_kwargs(getattr(model, "dtype", None), model.device))
    pipe.to(model.device)
    model.pipeline = pipe


def forget_edited(model, matrices: set[tuple[str, str]]) -> None:
    """Undo ``apply_delta``'s bookkeeping after the weights it changed were restored."""
    if matrices:
        setattr(model, EDITED_ATTR, set(getattr(model, EDITED_ATTR, None) or ()) - matrices)


def recorded_hash_matches(model, want: str, got: str | None = None) -> bool:
    """The model's weights (``got``: its ``model_weights_hash`` when already computed) equal the
    ``want`` recorded for them. A TIME / UCE edit recorded before the UNet was hashed carries the
    text-only hash, accepted for those models (their text encoders match)."""
    if (got if got is not None else model_weights_hash(model)) == want:
        return True
    return bool(getattr(model, EDITED_ATTR, None)) and text_weights_hash(model) == want


def resolve_history(ws, history: int | str | None = None):
    """A history by id or name, or the workspace's current one."""
    from store.histories import current_history, get_history

    return current_history(ws.db) if history is None else get_history(ws.db, history)


def delta_file(ws, edit) -> Path:
    """Absolute path of an edit's delta file (stored relative to the workspace)."""
    p = Path(edit.delta_path)
    return p if p.is_absolute() else Path(ws.root) / p


def load_deltas(ws, edits) -> list:
    """Load the EditDeltas of these edits, each checked against its recorded sha256."""
    from engine.delta import EditDelta

    deltas = []
    for e in edits:
        if not e.delta_path:
            raise DeltaIntegrityError(f"edit {e.id} (seq {e.seq}) has no delta file; it cannot be re-applied")
        path = delta_file(ws, e)
        if not path.is_file():
            raise DeltaIntegrityError(f"delta file {path} of edit {e.seq} is missing; restore it from a backup "
                                      "or roll back before that edit")
        deltas.append(EditDelta.load(path, expected_sha256=e.delta_sha256))
    return deltas


def load_dtype(ws, base=None, dtype: str | None = None) -> str | None:
    """The dtype a command loads the workspace's model in: ``dtype`` when given, else the session's
    override (``ws.dtype``, set from a command's ``--dtype``), else the base's default (``refact init
    --dtype``; None: as the files store it)."""
    if dtype is not None:
        return dtype
    if getattr(ws, "dtype", None) is not None:
        return ws.dtype
    if base is None:
        from store.base_models import get_base_model

        base = get_base_model(ws.db, resolve_history(ws).base_model_id)
    return getattr(base, "dtype", None)


def base_files_hash(model) -> str:
    """sha256 of the stored files of the model's text encoders (the whole folder for an encoder folder)."""
    from engine.stored_hash import stored_files_hash

    return stored_files_hash(model.path, model.slot_names if model.kind == "sd-pipeline" else None)


def verify_base(ws, base, model, got: str) -> None:
    """The loaded base is the registered one: its in-memory hash ``got`` equals the recorded one where
    both are of one dtype, else its stored files hash to the recorded ``files_hash``. An older base
    without a files hash gets it recorded at its first load that verifies. DeltaIntegrityError otherwise."""
    changed = DeltaIntegrityError(f"the base model at {base.path} changed since it was registered (encoder hash "
                                  "differs); restore it or start a new workspace")
    if got == base.encoder_hash:
        if getattr(base, "files_hash", None) is None and not getattr(ws, "read_only", False):
            from store.base_models import set_files_hash

            set_files_hash(ws.db, base.id, base_files_hash(model))
        return
    recorded = hash_dtype(base.encoder_hash)
    if recorded == getattr(model, "dtype", None):
        raise changed
    if getattr(base, "files_hash", None) is None:
        raise DeltaIntegrityError(
            f"the base at {base.path} was registered before file hashes were kept, so a load in "
            f"{model.dtype or 'its stored dtype'} cannot be checked; run a command once "
            f"{f'with --dtype {recorded}' if recorded else 'without --dtype'} to record it")
    if base_files_hash(model) != base.files_hash:
        raise changed


def load_history_model(ws, history: int | str | None = None, device: str = "auto", *,
                       with_pipeline: bool = False, upto_seq: int | None = None,
                       verify: bool = True, dtype: str | None = None) -> ModelState:
    """Base model + the history's applied deltas up to its head (or upto_seq), applied in order, loaded
    directly in ``load_dtype(ws, base, dtype)``.

    With verify, raises DeltaIntegrityError when the base encoder or the final weights differ from
    the hashes recorded in the workspace (across dtypes: see the module docstring).
    """
    from engine.models import load_model
    from store.base_models import get_base_model
    from store.edits import applied_edits

    hist = resolve_history(ws, history)
    base = get_base_model(ws.db, hist.base_model_id)
    head = hist.head_seq if upto_seq is None else upto_seq
    edits = applied_edits(ws.db, hist.id, head) if head > 0 else []
    deltas = load_deltas(ws, edits)
    dtype = load_dtype(ws, base, dtype)
    # a history with UNet edits (TIME, UCE) is rebuilt on the whole pipeline
    model = load_model(base.path, device=device, with_pipeline=with_pipeline or needs_pipeline(deltas), dtype=dtype)
    weights_hash = model_weights_hash(model)
    base_hash = weights_hash
    if verify:
        verify_base(ws, base, model, weights_hash)
        base_hash = base.encoder_hash  # the registered identity (delta files name their base by it)
    for delta in deltas:
        apply_delta(model, delta)
    if edits:
        weights_hash = model_weights_hash(model)
        want = edits[-1].weights_hash
        # a hash taken in another dtype cannot be compared: the base files and each delta's sha256 vouch
        if verify and want and hash_dtype(want) == dtype and not recorded_hash_matches(model, want, weights_hash):
            raise DeltaIntegrityError(
                f"rebuilding history {hist.name!r} up to edit {edits[-1].seq} gave different weights than "
                "when it was applied; a delta file or the base model changed"
            )
    return ModelState(model=model, history=hist, base=base, head_seq=edits[-1].seq if edits else 0,
                      edits=list(edits), base_encoder_hash=base_hash, weights_hash=weights_hash, dtype=dtype)


def working_model(ws, device: str = "auto", with_pipeline: bool = False):
    """The current history's model at its head (a LoadedModel), in the workspace's load dtype."""
    return load_history_model(ws, None, device, with_pipeline=with_pipeline).model
