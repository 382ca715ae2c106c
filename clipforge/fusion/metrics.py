"""Evaluation of a head's probabilities: accuracy, AUROC, macro-F1, calibration, confusion, bootstrap CIs.

All plain numpy (no scikit-learn in the dependencies). Binary and multiclass read the argmax column;
multilabel thresholds each sigmoid at 0.5 and averages per label.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a random positive > a random negative), ties count half
    (the Mann-Whitney U statistic from average ranks). NaN when one class is absent."""
    positive = positive.astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average rank within runs of equal scores
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def f1_per_class(pred: np.ndarray, true: np.ndarray, n: int) -> np.ndarray:
    """F1 of each class; NaN for a class neither true nor predicted anywhere in the set (it has no F1: a
    perfect head on a one-class subset must not score 0 on the others)."""
    out = np.full(n, np.nan)
    for c in range(n):
        tp = np.sum((pred == c) & (true == c))
        fp, fn = np.sum((pred == c) & (true != c)), np.sum((pred != c) & (true == c))
        if tp + fp + fn:
            out[c] = 2 * tp / (2 * tp + fp + fn)
    return out


def macro(values: Any) -> float:
    """The mean over the classes that have the metric (NaN if none has: an empty or degenerate set)."""
    v = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def confusion(pred: np.ndarray, true: np.ndarray, n: int) -> list[list[int]]:
    m = np.zeros((n, n), np.int64)
    np.add.at(m, (true, pred), 1)
    return m.tolist()


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Reliability diagram data and the expected calibration error (ECE, top-label, equal-width bins)."""
    edges = np.round(np.linspace(0, 1, bins + 1), 12)  # 0.6 is an edge, not 0.6000000000000001
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)  # bins (a, b], as Guo et al.
    conf: list[float | None] = []
    acc: list[float | None] = []
    count: list[int] = []
    for b in range(bins):
        m = which == b
        count.append(int(m.sum()))
        conf.append(float(confidence[m].mean()) if m.any() else None)
        acc.append(float(correct[m].mean()) if m.any() else None)
    ece = sum(c / len(confidence) * abs((a or 0.0) - (f or 0.0)) for c, a, f in zip(count, acc, conf, strict=True) if c)
    return {"confidence": conf, "accuracy": acc, "count": count, "ece": float(ece)}


def targets_matrix(targets: np.ndarray, task: str, n: int) -> np.ndarray:
    return targets.astype(np.int64) if task != "multilabel" else targets.astype(bool).reshape(-1, n)


def evaluate(probs: np.ndarray, targets: np.ndarray, task: str, labels: list[str]) -> dict[str, Any]:
    """probs [N, C]; targets: class index [N] (binary, multiclass) or 0/1 [N, C] (multilabel)."""
    n = len(labels)
    if task == "multilabel":
        t = targets.astype(bool)
        pred = probs >= 0.5
        per = [auroc(probs[:, c], t[:, c]) for c in range(n)]
        f1 = [f1_per_class(pred[:, c].astype(int), t[:, c].astype(int), 2)[1] for c in range(n)]  # NaN: never either
        conf = np.where(pred, probs, 1 - probs).ravel()
        return {
            "accuracy": float((pred == t).mean()),
            "exact_match": float((pred == t).all(1).mean()),
            "auroc": macro(per),
            "macro_f1": macro(f1),
            "reliability": reliability(conf, (pred == t).ravel()),
            "n": len(probs),
        }
    t = targets.astype(np.int64)
    pred = probs.argmax(1)
    aucs = [auroc(probs[:, 1], t == 1)] if task == "binary" else [auroc(probs[:, c], t == c) for c in range(n)]
    return {
        "accuracy": float((pred == t).mean()),
        "auroc": macro(aucs),
        "macro_f1": macro(f1_per_class(pred, t, n)),
        "reliability": reliability(probs.max(1), pred == t),
        "confusion": confusion(pred, t, n),
        "n": len(probs),
    }


def evaluate_groups(
    probs: np.ndarray, targets: np.ndarray, task: str, labels: list[str], groups: dict[str, np.ndarray]
) -> dict[str, Any]:
    """`evaluate` on everything, plus `<group>/<metric>` on each flagged subset (e.g. heldout/accuracy)."""
    out = evaluate(probs, targets, task, labels)
    for g, mask in groups.items():
        if mask.any():
            sub = evaluate(probs[mask], targets[mask], task, labels)
            out.update({f"{g}/{k}": v for k, v in sub.items() if k in ("accuracy", "auroc", "macro_f1", "n")})
    return out


def correct_vector(probs: np.ndarray, targets: np.ndarray, task: str) -> np.ndarray:
    """Per example: 1 when right (multilabel: the fraction of labels right)."""
    if task == "multilabel":
        return ((probs >= 0.5) == targets.astype(bool)).mean(1)
    return (probs.argmax(1) == targets.astype(np.int64)).astype(np.float64)


GROUP_METRICS = ("accuracy", "auroc", "macro_f1")  # what a comparison reports on each subset (held-out combos)
METRIC_NAMES = {"accuracy": "acc %", "auroc": "AUROC %", "macro_f1": "macro-F1 %"}
BOOT_CHUNK = 1 << 22  # example indices drawn at once by bootstrap_gain (32 MB of int64)
GAIN_BASES = ("late", "additive", "concat")  # the baselines `fuse compare` reports paired gains over, in order


def bootstrap_gain(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Paired bootstrap of mean(a) - mean(b) (per-example correctness of two heads on the SAME examples):
    resampling examples keeps the pairing, so the interval reflects test-set noise, not two draws.

    a, b may also be [seeds, N]: one row per training seed of that kind. Each resample then also draws the
    seeds of each kind with replacement, so the interval holds training-seed noise as well (a gain that
    one lucky seed made is not "above"). With one seed each this is exactly the one-dimensional case."""
    a2, b2 = np.atleast_2d(a), np.atleast_2d(b)
    if a2.ndim > 2 or b2.ndim > 2:
        raise ValueError(f"correctness must be [N] or [seeds, N], got shapes {a.shape} and {b.shape}")
    if n_boot < 1:
        raise ValueError(f"the number of bootstrap resamples must be at least 1, got {n_boot}")
    if a2.shape[1] != b2.shape[1]:
        raise ValueError(f"paired gain needs the same examples: {a2.shape[1]} vs {b2.shape[1]}")
    rng = np.random.default_rng(seed)
    n = a2.shape[1]
    one_seed = len(a2) == 1 and len(b2) == 1
    if not one_seed:
        seed_rng = np.random.default_rng(seed + 1)  # its own stream: the example draws stay those of one seed
        sa = seed_rng.integers(0, len(a2), size=(n_boot, len(a2)))
        sb = seed_rng.integers(0, len(b2), size=(n_boot, len(b2)))
    boots = np.empty(n_boot)
    step = max(1, BOOT_CHUNK // n)  # resamples per draw: bounded memory whatever the test set's size
    for s in range(0, n_boot, step):
        idx = rng.integers(0, n, size=(min(step, n_boot - s), n))  # the same stream as one [n_boot, N] draw
        if one_seed:
            boots[s : s + len(idx)] = (a2[0] - b2[0])[idx].mean(1)
        else:
            for j, k in enumerate(range(s, s + len(idx))):
                boots[k] = (a2[sa[k]].mean(0) - b2[sb[k]].mean(0))[idx[j]].mean()
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    gain = float((a2.mean(0) - b2.mean(0)).mean())  # one seed each: mean(a - b), exactly as before
    return {"gain": gain, "lo": float(lo), "hi": float(hi), "level": level}
