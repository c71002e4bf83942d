"""A cross-attention proxy metric: what the denoiser reads, without generating images.

For a text, the feature is the cross-attention keys and values of every ``attn2.to_k`` / ``attn2.to_v``
(input = the text width) applied to the final text-encoder token embeddings the UNet is conditioned
on (padded to 77 as the pipeline pads them), each averaged over the token positions and concatenated.
For each probe prompt the edited model's feature is compared with the unedited model's features of
its source and target texts: P(target) = softmax over negative L2 distances, with the success rules
of scoring.py. It sees both text-encoder edits (ReFACT) and UNet edits (TIME, UCE); images remain the
ground truth.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Any, Sequence

import torch

from engine.evaluation.scoring import EditScores, pair_probs_l2
from engine.evaluation.text_metrics import FeatureCache
from engine.methods.closed_form.projections import cross_attention_projections, text_width, token_embeddings
from engine.request import EditRequest


def projections(model: Any) -> dict[str, torch.nn.Linear] | None:
    """The cross-attention K/V projections of the model's UNet, or None when it has none."""
    unet = getattr(getattr(model, "pipeline", None), "unet", None)
    if not isinstance(unet, torch.nn.Module):
        return None
    mods = cross_attention_projections(unet, text_width(model), with_to_k=True)
    return mods or None


def available(model: Any) -> bool:
    """True when the proxy can be computed (a pipeline with a UNet conditioned on this text encoder)."""
    try:
        return projections(model) is not None
    except Exception:  # noqa: BLE001 - e.g. a text encoder without a hidden_size
        return False


# Position-mean token embeddings by exact batch of texts, per text encoder and weights state. A UNet
# edit (TIME, UCE) leaves the text encoder as it is, so the edited model's prompts reuse the batches the
# unedited pass (the baseline) encoded: the same texts in the same batch give the same bits, so no
# number changes. Any in-place change of an encoder weight (a ReFACT delta, an fc2 swap) bumps its
# version counter and misses.
_MEANS: "weakref.WeakKeyDictionary[torch.nn.Module, OrderedDict]" = weakref.WeakKeyDictionary()
_MEANS_MAX = 512  # batches kept per encoder (<= 32 x d float64 each: 100 MB at most for d = 768)


def _encoder_state(encoder: torch.nn.Module) -> tuple:
    """Storage, version counter and a strided value sample of every weight (the sample also sees an
    edit made through ``.data``, which bypasses the counter), as ``EncoderAdapter.upstream_hash``."""
    from engine.adapters.base import _sample_sum

    with torch.no_grad():
        return tuple((p.data_ptr(), p._version, _sample_sum(p)) for p in encoder.parameters())


def _mean_embeddings(model: Any, texts: list[str]) -> torch.Tensor:
    """[N, d] float64 cpu: ``token_embeddings(model, texts)`` averaged over the positions (cached)."""
    encoder = model.text_encoder
    key = (_encoder_state(encoder), int(model.adapter.max_length), id(model.tokenizer), str(model.device),
           tuple(texts))
    cache = _MEANS.setdefault(encoder, OrderedDict())
    hit = cache.get(key)
    if hit is not None:
        cache.move_to_end(key)
        return hit
    emb, _, _ = token_embeddings(model, texts)
    mean = emb.mean(dim=1)  # the projections are linear: mean_t(W e_t) = W mean_t(e_t), 77x cheaper
    cache[key] = mean
    while len(cache) > _MEANS_MAX:
        cache.popitem(last=False)
    return mean


@torch.no_grad()
def kv_features(model: Any, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """[N, F] float32 cpu: position-mean K and V of every cross-attention projection, concatenated."""
    mods = projections(model)
    if mods is None:
        raise ValueError("this model has no UNet cross-attention; the proxy needs a diffusion pipeline")
    texts = list(texts)
    out = []
    weights = [mod.weight.detach().to("cpu", torch.float64) for mod in mods.values()]
    for i in range(0, len(texts), batch_size):
        mean = _mean_embeddings(model, texts[i : i + batch_size])
        out.append(torch.cat([mean @ w.T for w in weights], dim=-1).float())
    return torch.cat(out) if out else torch.zeros(0)


def frozen_kv(model: Any) -> FeatureCache:
    """A cache of K/V features by text; fill it while the model is unedited (``prefill``)."""
    return FeatureCache(lambda texts: kv_features(model, texts))


def request_texts(request: EditRequest) -> list[str]:
    """Every source and target text a request's scoring compares against."""
    probes = (*request.positives, *request.negatives)
    return [request.source, request.target, *(p.source for p in probes), *(p.target for p in probes)]


def cross_attn_scores(model: Any, frozen: FeatureCache, request: EditRequest) -> EditScores:
    """Probability pairs [P(source), P(target)] of the edit prompt and every probe (one 'seed')."""
    prompts = [request.prompt] + [p.prompt for p in request.positives] + [p.prompt for p in request.negatives]
    sources = [request.source] + [p.source for p in request.positives] + [p.source for p in request.negatives]
    targets = [request.target] + [p.target for p in request.positives] + [p.target for p in request.negatives]
    feats = kv_features(model, prompts)
    probs = pair_probs_l2(feats, frozen.get(sources), frozen.get(targets)).numpy()[None]
    npos = len(request.positives)
    return EditScores(efficacy=probs[:, :1], generality=probs[:, 1 : 1 + npos], specificity=probs[:, 1 + npos :])
