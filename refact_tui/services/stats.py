"""Second-moment statistics of a workspace (the covariance C ReFACT needs per edited layer)."""

from __future__ import annotations

from pathlib import Path

from engine.errors import EngineError
from engine.events import ProgressCallback


def _store(ws):
    from engine.covariance import SecondMomentStore

    return SecondMomentStore(Path(ws.stats_dir))


def default_layers(ws, num_layers: int) -> list[int]:
    """Layers worth precomputing: those of queued jobs of the current history, else the default."""
    from store.jobs import list_jobs

    hist = ws.history()
    layers = sorted({j.hparams.layer for j in list_jobs(ws.db, hist.id, states=["queued"])})
    layers = [l for l in layers if 0 <= l < num_layers]
    if layers:
        return layers
    from refact_tui.services.queue import default_hparams

    return [default_hparams(ws).layer]


def compute_stats(ws, layer: int | None = None, corpus: Path | None = None, samples: int | None = None,
                  on_progress: ProgressCallback | None = None, device: str = "auto", slot: str | None = None) -> list:
    """Compute (or load from cache) C for `layer` (default: see default_layers) of the working model's
    first encoder slot or ``slot``, and make corpus / samples the workspace's settings for later edits.
    Returns the StatsEntries. Other slots' default layer is their recorded per-slot default."""
    from refact_tui.services.runner import STATS_CORPUS_KEY, STATS_SAMPLES_KEY
    from refact_tui.services.working_model import working_model
    from store.db import set_meta

    if samples is not None and samples < 1:
        raise EngineError(f"--samples must be >= 1, got {samples}")
    if corpus is not None:
        corpus = Path(corpus).expanduser().absolute()
        if not corpus.is_file():
            raise EngineError(f"corpus {corpus} not found; pass an existing text file (one caption per line)")
    model = working_model(ws, device)
    target = model.slot(slot) if slot is not None and hasattr(model, "slot") else model
    n = target.adapter.num_layers
    if layer is not None:
        layers = [layer]
    elif target is model or target is model.slots[0]:
        layers = default_layers(ws, n)
    else:
        layers = [target.default_layer()]
    for l in layers:
        if not 0 <= l < n:
            raise EngineError(f"layer {l} does not exist; {getattr(target, 'component', 'the encoder')} has layers 0..{n - 1}")
    model = target
    store = _store(ws)
    for l in layers:
        store.get(model, l, corpus=corpus, n_samples=samples, progress=on_progress)
    set_meta(ws.db, STATS_CORPUS_KEY, str(corpus) if corpus else "")
    set_meta(ws.db, STATS_SAMPLES_KEY, str(samples) if samples else "")
    wanted = {(l, model.adapter.upstream_hash(l)) for l in layers}
    want_n = str(samples) if samples is not None else "all"
    return [e for e in store.entries() if (e.layer, e.upstream_hash) in wanted and e.n_samples == want_n]


def list_stats(ws) -> list:
    """Every cached second moment of the workspace (StatsEntry rows)."""
    return _store(ws).entries()
