import math

import pytest
import torch
import torch.nn.functional as F

from clipforge.training.diagnostics import (
    alignment,
    canonical_correlations,
    coordination_diagnostics,
    infonce_mi_bound,
    modality_gap,
    positive_negative_cosine,
    uniformity,
)


def unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_identical_modalities_zero_gap_perfect_alignment_max_mi():
    x = unit(500, 32, 0)
    assert modality_gap(x, x) == pytest.approx(0.0, abs=1e-6)
    assert alignment(x, x) == pytest.approx(0.0, abs=1e-10)
    assert infonce_mi_bound(x, x, logit_scale=100.0) == pytest.approx(math.log(500), abs=0.05)
    assert canonical_correlations(x, x)[0] == pytest.approx(1.0, abs=1e-3)
    pos, neg = positive_negative_cosine(x, x)
    assert pos == pytest.approx(1.0) and abs(neg) < 0.05


def test_independent_embeddings_have_no_correlation_and_no_information():
    img, txt = unit(4000, 8, 1), unit(4000, 8, 2)
    assert max(canonical_correlations(img, txt)) < 0.1
    assert abs(infonce_mi_bound(img, txt, logit_scale=1.0)) < 0.1  # Jensen gap: about -var/2 = -1/16
    pos, neg = positive_negative_cosine(img, txt)
    assert abs(pos) < 0.05 and abs(neg) < 0.05
    assert alignment(img, txt) == pytest.approx(2.0, abs=0.1)  # E||a-b||^2 = 2 for independent unit vectors


def test_modality_gap_of_shifted_clusters():
    base = unit(300, 16, 3)
    shift = torch.zeros(16)
    shift[0] = 3.0
    a, b = F.normalize(base + shift, dim=-1), F.normalize(base - shift, dim=-1)
    assert modality_gap(a, b) > 1.5  # centroids near +e0 and -e0
    assert modality_gap(a, a) == pytest.approx(0.0, abs=1e-6)


def test_uniformity_collapsed_vs_spread():
    collapsed = F.normalize(torch.ones(200, 8) + 1e-3 * torch.randn(200, 8), dim=-1)
    assert uniformity(collapsed) == pytest.approx(0.0, abs=1e-3)  # all points equal: log E exp(0) = 0
    assert uniformity(unit(200, 8, 4)) < -1.5


def test_cca_recovers_a_planted_linear_relation():
    x = unit(2000, 8, 5)
    noise = unit(2000, 8, 6)
    y = F.normalize(torch.cat([x[:, :2], noise[:, 2:]], dim=1), dim=-1)  # two shared directions
    cc = canonical_correlations(x, y)
    assert cc[0] > 0.8 and cc[1] > 0.8 and cc[2] < 0.2


def test_bundle_of_all_diagnostics():
    d = coordination_diagnostics(unit(100, 8, 7), unit(100, 8, 8), 14.3)
    assert set(d) >= {"mi_lower_bound", "alignment", "uniformity_image", "modality_gap", "cca_top", "cosine_positive"}


def test_one_pair_reports_what_cannot_be_computed_instead_of_failing():
    """`eval --limit 1` (or a held-out set with one usable pair) failed with "SVD did not converge"."""
    d = coordination_diagnostics(unit(1, 8, 7), unit(1, 8, 8), 14.3)
    assert d["cca_top"] is None and d["cca_mean_top10"] is None and d["uniformity_image"] is None
    assert (
        d["not_computable"]
        == "uniformity_image, uniformity_text, cca_top not computable from 1 pair(s) (need at least 2)"
    )
    assert d["mi_lower_bound"] == 0.0 and d["alignment"] > 0  # what one pair does give is still there
    assert "not_computable" not in coordination_diagnostics(unit(2, 8, 7), unit(2, 8, 8), 14.3)
