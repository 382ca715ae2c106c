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


def threeway_set(n_images: int = 300, noise: float = 0.05, seed: int = 0) -> PairSet:
    """The synth's yes/no/absent questions ("is the circle red?") on idealised embeddings: each side is
    [one-hot colour; one-hot shape] plus a little noise, so cos(z_i, z_t) ~ (colour match + shape match) / 2.
    "no" (shape matches) and an "absent" whose colour matches then have the same cosine: a threshold on it
    (late fusion) gets at most 5/6 right, while a head that sees WHICH part matches can get them all."""
    import random

    from clipforge.training.synth import COLORS, SHAPES, threeway_rows

    colours, shapes = list(COLORS), list(SHAPES)
    combos = [(c, s) for c in colours for s in shapes]
    rng, noise_rng = random.Random(seed), np.random.default_rng(seed)

    def embed(c: str, s: str) -> np.ndarray:
        v = np.zeros(len(colours) + len(shapes))
        v[colours.index(c)] = v[len(colours) + shapes.index(s)] = 1
        return v + noise * noise_rng.normal(size=v.shape)

    zi, zt, labels = [], [], []
    for _ in range(n_images):
        c, s = rng.choice(combos)
        for r in threeway_rows(c, s, rng, combos):
            zi.append(embed(c, s))
            zt.append(embed(r["q_color"], r["q_shape"]))
            labels.append(r["label"])
    n = len(labels)
    return PairSet(
        unit(np.array(zi)),
        unit(np.array(zt)),
        np.arange(n),
        np.arange(n),
        labels,
        {},
        [str(i) for i in range(n)],
        "f" * 64,
    )
