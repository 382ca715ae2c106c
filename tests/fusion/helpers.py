"""Constructed feature sets for the fusion tests."""

from __future__ import annotations

import numpy as np

from clipforge.fusion.features import PairSet


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def xor_set(n: int = 1200, dim: int = 16, seed: int = 0) -> PairSet:
    """The label is s_i XNOR s_t (signs of coordinate 0 of the image side and 1 of the text side): no
    f(z_i) + g(z_t) separates it, and the cosine z_i . z_t (late fusion) carries no trace of it."""
    rng = np.random.default_rng(seed)
    si, st = rng.choice([-1.0, 1.0], n), rng.choice([-1.0, 1.0], n)
    zi, zt = 0.3 * rng.normal(size=(n, dim)), 0.3 * rng.normal(size=(n, dim))
    zi[:, 0], zt[:, 1] = si, st
    zi[:, 1], zt[:, 0] = 0, 0
    labels = ["yes" if a == b else "no" for a, b in zip(si, st, strict=True)]
    return PairSet(
        unit(zi),
        unit(zt),
        np.arange(n),
        np.arange(n),
        labels,
        {"first": np.arange(n) < n // 4},
        [str(i) for i in range(n)],
        "f" * 64,
    )
