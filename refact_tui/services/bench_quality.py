"""The bench's image-quality check on a fixed caption subset with fixed seeds (caption i: seed offset + i).

CLIP score (100*cos, the judge's) of the unedited model's caption images, generated once per key and
shared, against the mean over rows of the same captions after each row's edit. FID between the
unedited caption images and all edited ones only when pytorch-fid's Inception weights are on disk.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from refact_tui.services.bench_config import FID_HOWTO


class CaptionQuality:
    def __init__(self, ws, key: str, model, judge, captions: list[str], options, images_step: Callable):
        from engine.evaluation.quality import fid_status

        self.ws, self.key, self.model, self.judge, self.captions = ws, key, model, judge, captions
        self.seeds = [options.seed_offset + i for i in range(len(captions))]
        self.gen = options.image_config().generation
        self.images_step = images_step
        self.fid_ok = fid_status()[0]
        self.before_scores: list[float] = []
        self.before_images: list = []
        self.after_means: list[float] = []
        self.after_images: list = []

    def _render(self) -> tuple[np.ndarray, list]:
        from engine.evaluation.bench_images import caption_clip

        return self.images_step(len(self.captions), lambda cb: caption_clip(
            self.model, self.judge, self.captions, self.seeds, self.gen, keep_images=self.fid_ok))

    def before(self) -> None:
        """Caption scores of the unedited model (stored once per key; re-rendered only for FID)."""
        from store.bench_runs import get_references, put_references

        stored = get_references(self.ws.db, self.key, "quality", "before")
        if 0 in stored and not self.fid_ok:
            self.images_step(len(self.captions), lambda cb: None)
            self.before_scores = list(stored[0]["clip"])
            return
        scores, self.before_images = self._render()
        self.before_scores = scores.tolist()
        put_references(self.ws.db, self.key, "quality", "before", {0: {"clip": self.before_scores}})

    def after_row(self) -> None:
        """Caption scores with the current row's edit applied."""
        scores, images = self._render()
        self.after_means.append(float(scores.mean()))
        self.after_images += images

    def result(self, notes: list[str]) -> dict[str, Any]:
        fid = None
        if self.fid_ok and self.before_images and self.after_images:
            from engine.evaluation.quality import inception_fid

            fid = inception_fid(self.before_images, self.after_images, self.model.device)
        else:
            notes.append(FID_HOWTO)
        return {"clip_score_before": float(np.mean(self.before_scores)), "clip_score": float(np.mean(self.after_means)),
                "n_captions": len(self.captions), "fid": fid, "clip_score_per_row": self.after_means}
