"""Image-quality checks: CLIP score of generated images vs their captions (before vs after the
edits), and FID only when Inception weights are already on disk (never downloaded)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# pytorch-fid's Inception weights, looked for in the torch hub checkpoint cache.
FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"


@dataclass(frozen=True)
class QualityResult:
    clip_score_before: float
    clip_score_after: float
    n: int
    fid: float | None
    fid_note: str

    @property
    def clip_score_delta(self) -> float:
        return self.clip_score_after - self.clip_score_before


def load_captions(path: Path, n: int) -> list[str]:
    """The first ``n`` non-empty lines of a caption file."""
    lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    return [ln for ln in lines if ln][:n]


def fid_weights_path() -> Path | None:
    """Local pytorch-fid Inception weights, or None."""
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints" / FID_WEIGHTS
    return hub if hub.is_file() else None


def fid_status() -> tuple[bool, str]:
    """(available, why not): FID needs pytorch_fid installed and its weights on disk."""
    try:
        import pytorch_fid  # noqa: F401
    except ImportError:
        return False, "FID skipped: pytorch-fid is not installed"
    if fid_weights_path() is None:
        return False, f"FID skipped: Inception weights {FID_WEIGHTS} not in the torch hub cache"
    return True, ""


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1-mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2); the trace of the root from the eigenvalues of S1 S2."""
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    eig = np.linalg.eigvals(s1 @ s2)
    tr_root = np.sqrt(np.clip(eig.real, 0, None)).sum()
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_root)


def inception_fid(images_a: list, images_b: list, device: torch.device) -> float:
    """FID between two image sets with pytorch-fid's Inception (call only when fid_status() is ok)."""
    from pytorch_fid.inception import InceptionV3
    from torchvision.transforms.functional import pil_to_tensor

    model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to(device).eval()

    def stats(images):
        x = torch.stack([pil_to_tensor(im.convert("RGB")).float() / 255.0 for im in images]).to(device)
        with torch.no_grad():
            f = model(x)[0].squeeze(-1).squeeze(-1).cpu().numpy().astype(np.float64)
        return f.mean(0), np.cov(f, rowvar=False)

    return frechet_distance(*stats(images_a), *stats(images_b))
