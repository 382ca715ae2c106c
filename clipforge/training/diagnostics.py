"""Coordination diagnostics of two embedding spaces, computed on held-out (image, caption) pairs.

All take L2-normalised features with row i of `img` paired with row i of `txt`:
- `infonce_mi_bound`: log N - L_InfoNCE, a lower bound on the mutual information between the modalities
  (van den Oord et al., 2018), in nats;
- `alignment` and `uniformity` (Wang & Isola, 2020);
- `modality_gap`: distance between the image and text centroids (Liang et al., 2022);
- `canonical_correlations`: CCA between the two embedding sets, largest first;
- mean cosine of positive pairs against negatives.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clipforge.training.loss import clip_loss


def infonce_mi_bound(img: torch.Tensor, txt: torch.Tensor, logit_scale: float) -> float:
    loss = clip_loss(img, txt, torch.tensor(logit_scale))  # the training loss (symmetric InfoNCE) on N pairs
    return math.log(img.shape[0]) - float(loss)


def alignment(img: torch.Tensor, txt: torch.Tensor, alpha: float = 2.0) -> float:
    """E ||f(x) - g(y)||^alpha over positive pairs: 0 when paired embeddings coincide."""
    return float((img - txt).norm(dim=1).pow(alpha).mean())


def uniformity(x: torch.Tensor, t: float = 2.0, max_n: int = 2000) -> float:
    """log E exp(-t ||x_i - x_j||^2) over distinct pairs: lower is more uniform on the sphere."""
    x = x[:max_n]
    sq = torch.pdist(x, p=2).pow(2)
    return float(sq.mul(-t).exp().mean().log())


def modality_gap(img: torch.Tensor, txt: torch.Tensor) -> float:
    return float((img.mean(0) - txt.mean(0)).norm())


def canonical_correlations(img: torch.Tensor, txt: torch.Tensor, k: int = 10, ridge: float = 1e-3) -> list[float]:
    """Top-k canonical correlations (ridge-regularised CCA via whitening + SVD)."""
    x = img.double().numpy()
    y = txt.double().numpy()
    x = x - x.mean(0)
    y = y - y.mean(0)
    n = x.shape[0]

    def inv_sqrt(c: np.ndarray) -> np.ndarray:
        w, v = np.linalg.eigh(c)
        return (v / np.sqrt(np.clip(w, 1e-12, None))) @ v.T

    cxx = x.T @ x / (n - 1)
    cyy = y.T @ y / (n - 1)
    cxy = x.T @ y / (n - 1)
    cxx += ridge * np.trace(cxx) / cxx.shape[0] * np.eye(cxx.shape[0])
    cyy += ridge * np.trace(cyy) / cyy.shape[0] * np.eye(cyy.shape[0])
    s = np.linalg.svd(inv_sqrt(cxx) @ cxy @ inv_sqrt(cyy), compute_uv=False)
    return [float(v) for v in np.clip(s[:k], 0.0, 1.0)]


def positive_negative_cosine(img: torch.Tensor, txt: torch.Tensor) -> tuple[float, float]:
    sim = img @ txt.T  # [N, N]
    n = sim.shape[0]
    pos = sim.diagonal().mean()
    neg = (sim.sum() - sim.diagonal().sum()) / max(1, n * n - n)
    return float(pos), float(neg)


def coordination_diagnostics(
    img: torch.Tensor, txt: torch.Tensor, logit_scale: float
) -> dict[str, float | list[float] | None]:
    """All diagnostics; one that cannot be computed from these pairs is None, and `not_computable` says why."""
    img, txt = F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1)
    pos, neg = positive_negative_cosine(img, txt)
    out: dict[str, Any] = {
        "mi_lower_bound": infonce_mi_bound(img, txt, logit_scale),
        "mi_upper_limit": math.log(img.shape[0]),  # log N: the bound can never exceed it
        "alignment": alignment(img, txt),
        "modality_gap": modality_gap(img, txt),
        "cosine_positive": pos,
        "cosine_negative": neg,
    }
    n = img.shape[0]
    # uniformity needs distinct pairs, CCA a covariance (n - 1 > 0); an SVD of degenerate data may also fail
    needs_pairs = {
        "uniformity_image": lambda: uniformity(img),
        "uniformity_text": lambda: uniformity(txt),
        "cca_top": lambda: canonical_correlations(img, txt),
    }
    failed: dict[str, str] = {}
    for key, compute in needs_pairs.items():
        try:
            out[key] = compute() if n >= 2 else None
        except np.linalg.LinAlgError as exn:
            out[key], failed[key] = None, f"degenerate features: {exn}"
        if n < 2:
            failed[key] = "need at least 2"
    out["cca_mean_top10"] = float(np.mean(out["cca_top"])) if out["cca_top"] is not None else None
    if failed:
        why = "; ".join(sorted(set(failed.values())))
        out["not_computable"] = f"{', '.join(failed)} not computable from {n} pair(s) ({why})"
    return out
