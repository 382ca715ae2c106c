"""The metrics every fusion table reports, on hand-made predictions whose right values are known."""

from __future__ import annotations

import math

import numpy as np

from clipforge.fusion.metrics import evaluate, reliability


def one_hot_probs(pred: list[int], n: int) -> np.ndarray:
    p = np.full((len(pred), n), 0.1 / (n - 1))
    p[np.arange(len(pred)), pred] = 0.9
    return p


def test_macro_f1_averages_only_the_classes_the_set_has() -> None:
    """A perfect head on a set with no "absent" answers scored macro-F1 0.667 (absent's F1 counted as 0)."""
    truth = np.array([0, 1, 0, 1, 1])
    m = evaluate(one_hot_probs([0, 1, 0, 1, 1], 3), truth, "multiclass", ["yes", "no", "absent"])
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0
    only_yes = evaluate(one_hot_probs([1, 1, 1], 2), np.array([1, 1, 1]), "binary", ["no", "yes"])
    assert only_yes["macro_f1"] == 1.0 and math.isnan(only_yes["auroc"])  # AUROC needs both classes
    wrong = evaluate(one_hot_probs([2, 1], 3), np.array([0, 1]), "multiclass", ["a", "b", "c"])
    assert math.isclose(wrong["macro_f1"], (0 + 1 + 0) / 3)  # a predicted class that is wrong still counts


def test_multilabel_macro_f1_skips_labels_never_true_nor_predicted() -> None:
    truth = np.array([[1, 0, 0], [0, 1, 0]])
    probs = np.array([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1]])
    m = evaluate(probs, truth, "multilabel", ["a", "b", "c"])
    assert m["macro_f1"] == 1.0 and m["exact_match"] == 1.0


def test_reliability_bins_are_closed_on_the_right() -> None:
    """0.6 fell into the [0.5, 0.6) bin (linspace's 0.6000000000000001 edge) while 0.5 opened it."""
    r = reliability(np.array([0.5, 0.6, 0.61, 1.0]), np.array([True, True, False, True]))
    assert r["count"][4] == 1 and r["count"][5] == 1 and r["count"][6] == 1 and r["count"][9] == 1
