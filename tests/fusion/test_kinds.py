"""The mathematics of each fusion kind on constructed inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipforge.fusion.config import load_fuse_config
from clipforge.fusion.kinds import KINDS, build_fusion
from clipforge.fusion.metrics import evaluate
from clipforge.fusion.train import encode_targets, fit, predict
from tests.fusion.helpers import threeway_set, unit, xor_set

D = 12


def features(n: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.nn.functional.normalize(torch.randn(n, D, generator=g), dim=-1),
        torch.nn.functional.normalize(torch.randn(n, D, generator=g), dim=-1),
    )


@pytest.mark.parametrize("kind", list(KINDS))
def test_shapes_and_numpy_agree_with_torch(kind: str) -> None:
    zi, zt = features()
    m = build_fusion(kind, D, 3, width=5, rank=2, hidden=6)
    for p in m.parameters():  # move off the initial values (zero biases, constant scales)
        torch.nn.init.normal_(p, std=0.5)
    out = m(zi, zt)
    assert out.shape == (7, 3)
    assert np.allclose(m.numpy_forward(m.numpy_params(), zi.numpy(), zt.numpy()), out.detach().numpy(), atol=1e-5)


def test_parameter_counts() -> None:
    p_i, p_t, out = 5, 3, 2
    proj = (D * p_i + p_i) + (D * p_t + p_t)
    tensor = build_fusion("tensor", D, out, width=p_i, width_text=p_t)
    assert dict(tensor.named_parameters())["head_w"].shape == ((p_i + 1) * (p_t + 1), out)  # every term present
    assert tensor.n_params() == proj + (p_i + 1) * (p_t + 1) * out + out
    r = 4
    assert (
        build_fusion("lowrank", D, out, width=p_i, width_text=p_t, rank=r).n_params()
        == proj + r * out * (p_i + 1 + p_t + 1) + r + out
    )
    p = 5
    proj = 2 * (D * p + p)
    assert build_fusion("late", D, out, width=p).n_params() == 2 * out
    assert build_fusion("additive", D, out, width=p).n_params() == proj + 2 * p + p * out + out
    assert build_fusion("multiplicative", D, out, width=p).n_params() == proj + 3 * p * out + out
    assert build_fusion("concat", D, out, width=p, hidden=7).n_params() == proj + (2 * p + 1) * 7 + 7 * out + out
    assert build_fusion("gated", D, out, width=p).n_params() == proj + 2 * (p * p + p) + 2 * p * out + out


def test_tensor_terms_are_the_outer_product_with_ones() -> None:
    """Unimodal and bimodal terms: a weight on term (a, b) of the outer product reads h_i[a] * h_t[b], and
    the last row/column (the appended 1) reads h_i or h_t alone."""
    zi, zt = features()
    m = build_fusion("tensor", D, 1, width=3, width_text=2)
    P = dict(m.named_parameters())
    hi, ht = m.project(P, zi, zt)
    with torch.no_grad():
        for (a, b), expect in {
            (1, 0): hi[:, 1] * ht[:, 0],
            (2, 2): hi[:, 2],
            (3, 1): ht[:, 1],
            (3, 2): 1 + 0 * hi[:, 0],
        }.items():
            P["head_w"].zero_()
            P["head_b"].zero_()
            P["head_w"][a * 3 + b, 0] = 1.0
            assert torch.allclose(m(zi, zt)[:, 0], expect, atol=1e-6)


def test_lowrank_at_full_rank_represents_the_tensor_layer_exactly() -> None:
    """Factor each output's (p_i+1) x (p_t+1) weight matrix by SVD: rank min(p_i, p_t) + 1 reproduces any
    tensor-fusion head; a lower rank cannot (a random matrix has full rank)."""
    p_i, p_t, out = 4, 3, 2
    zi, zt = features(50)
    tensor = build_fusion("tensor", D, out, width=p_i, width_text=p_t)
    with torch.no_grad():
        for p in tensor.parameters():
            torch.nn.init.normal_(p)
    T = dict(tensor.named_parameters())
    W = T["head_w"].detach().reshape(p_i + 1, p_t + 1, out)  # per output k: W[:, :, k]
    for r, exact in ((min(p_i, p_t) + 1, True), (min(p_i, p_t), False)):
        low = build_fusion("lowrank", D, out, width=p_i, width_text=p_t, rank=r)
        L = dict(low.named_parameters())
        with torch.no_grad():
            for name in ("proj_i_w", "proj_i_b", "proj_t_w", "proj_t_b"):
                L[name].copy_(T[name])
            fi, ft = torch.zeros(p_i + 1, r, out), torch.zeros(p_t + 1, r, out)
            for k in range(out):
                U, S, Vh = torch.linalg.svd(W[:, :, k], full_matrices=False)
                fi[:, :, k] = (U * S)[:, :r]
                ft[:, :, k] = Vh.T[:, :r]
            L["factor_i"].copy_(fi.reshape(p_i + 1, r * out))
            L["factor_t"].copy_(ft.reshape(p_t + 1, r * out))
            L["lam"].fill_(1.0)
            L["bias"].copy_(T["head_b"])
        close = torch.allclose(low(zi, zt), tensor(zi, zt), atol=1e-4)
        assert close is exact, (r, close)


@pytest.mark.parametrize("open_side", ["image", "text"])
def test_gated_with_pinned_gates_is_a_unimodal_head(open_side: str) -> None:
    zi, zt = features(20)
    m = build_fusion("gated", D, 2, width=4)
    P = dict(m.named_parameters())
    with torch.no_grad():
        for p in m.parameters():
            torch.nn.init.normal_(p)
        for side in ("i", "t"):  # gate weights 0, bias +-1e4: sigmoid is exactly 1 or 0 in float32
            P[f"gate_{side}_w"].zero_()
            P[f"gate_{side}_b"].fill_(1e4 if (side == "i") == (open_side == "image") else -1e4)
        hi, ht = m.project(P, zi, zt)
        w = P["head_w"]
        unimodal = hi @ w[:4] + P["head_b"] if open_side == "image" else ht @ w[4:] + P["head_b"]
        assert torch.equal(m(zi, zt), unimodal)
        other = features(20, seed=9)  # the closed side's input no longer matters at all
        moved = m(zi, other[1]) if open_side == "image" else m(other[0], zt)
        assert torch.equal(moved, unimodal)


def test_xor_needs_an_interaction() -> None:
    """s_i XNOR s_t: additive (and late: a cosine of mostly-noise vectors) stay near chance; the kinds with
    product terms solve it."""
    train, val = xor_set(1200, seed=0), xor_set(600, seed=1)
    cfg = load_fuse_config("smoke", ["fit.epochs=25", "fit.lr=0.02", "fit.batch_size=128"])
    acc = {}
    for kind in ("additive", "multiplicative", "tensor", "lowrank", "late"):
        m = build_fusion(kind, 16, 1, width=4, rank=2)
        fit(m, train, None, cfg, ["no", "yes"], progress=False)
        y = encode_targets(val.labels, "binary", ["no", "yes"])
        acc[kind] = evaluate(predict(m, val, "binary"), y, "binary", ["no", "yes"])["accuracy"]
    assert acc["additive"] < 0.6 and acc["late"] < 0.6, acc
    for kind in ("multiplicative", "tensor", "lowrank"):
        assert acc[kind] >= 0.95, acc


def test_unit_helper_normalises() -> None:
    assert np.allclose(np.linalg.norm(unit(np.ones((2, 3))), axis=1), 1)


def test_yes_no_absent_defeats_the_cosine_by_construction() -> None:
    """The synth's 3-way task on idealised features: `late` cannot tell "no" (the shape matches) from an
    "absent" whose colour matches (one cosine), so it stays at or under 5/6; additive cannot compare the two
    sides at all; the product kinds answer almost every question."""
    labels = ["yes", "no", "absent"]
    train, val = threeway_set(300, seed=0), threeway_set(150, seed=1)
    cfg = load_fuse_config("smoke", ["fit.epochs=40", "fit.lr=0.02", "fit.batch_size=128", "head.task=multiclass"])
    acc = {}
    for kind in ("late", "additive", "multiplicative", "tensor"):
        m = build_fusion(kind, train.dim, 3, width=0 if kind == "tensor" else 8)
        fit(m, train, None, cfg, labels, progress=False)
        y = encode_targets(val.labels, "multiclass", labels)
        acc[kind] = evaluate(predict(m, val, "multiclass"), y, "multiclass", labels)["accuracy"]
    assert acc["late"] <= 5 / 6 + 0.02 and acc["additive"] < 0.6, acc
    assert acc["multiplicative"] >= 0.95 and acc["tensor"] >= 0.95, acc


STRUCTURED = ("multiplicative", "tensor", "lowrank", "gated")


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_post_fusion_layer_is_where_it_belongs_and_numpy_agrees(kind: str) -> None:
    """head.post_hidden: a ReLU layer after the fusion of the structured kinds (TFN's and LMF's inference
    subnetwork). Not for additive (a hinge of f(z_i) + g(z_t) is an interaction: it would stop being the
    control), concat (its hidden layer is `hidden`) or late."""
    zi, zt = features()
    plain = build_fusion(kind, D, 3, width=5, rank=2, hidden=6)
    post = build_fusion(kind, D, 3, width=5, rank=2, hidden=6, post_hidden=4)
    if kind not in STRUCTURED:
        assert post.post_hidden == 0 and post.n_params() == plain.n_params()
        return
    fused = {"multiplicative": 3 * 5, "tensor": 6 * 6, "gated": 10}
    if kind == "lowrank":  # the factors produce post_hidden values instead of 3 logits
        assert post.n_params() - plain.n_params() == 2 * (5 + 1) * 2 * (4 - 3) + (4 - 3) + (4 * 3 + 3)
    else:  # the fusion layer widens from 3 outputs to 4, then 4 -> 3
        assert post.n_params() - plain.n_params() == (fused[kind] + 1) * (4 - 3) + (4 * 3 + 3)
    for p in post.parameters():
        torch.nn.init.normal_(p, std=0.5)
    out = post(zi, zt)
    assert out.shape == (7, 3) and post.config()["post_hidden"] == 4
    assert np.allclose(post.numpy_forward(post.numpy_params(), zi.numpy(), zt.numpy()), out.detach().numpy(), atol=1e-5)
    again = build_fusion(kind, **post.config())  # what load_head does with head.json's "module"
    again.load_state_dict(post.state_dict())
    assert torch.equal(again(zi, zt), out)


def test_a_head_json_from_before_post_hidden_loads_as_a_linear_head() -> None:
    config = build_fusion("tensor", D, 2, width=3).config()
    del config["post_hidden"]  # head.json files written before the option
    assert build_fusion("tensor", **config).post_hidden == 0


def test_the_structured_kinds_with_a_post_layer_still_solve_xor_and_additive_stays_at_chance() -> None:
    train, val = xor_set(1200, seed=0), xor_set(600, seed=1)
    cfg = load_fuse_config("smoke", ["fit.epochs=25", "fit.lr=0.02", "fit.batch_size=128"])
    y = encode_targets(val.labels, "binary", ["no", "yes"])
    acc = {}
    for kind in ("additive", *STRUCTURED):
        m = build_fusion(kind, 16, 1, width=4, rank=2, post_hidden=8)
        fit(m, train, None, cfg, ["no", "yes"], progress=False)
        acc[kind] = evaluate(predict(m, val, "binary"), y, "binary", ["no", "yes"])["accuracy"]
    assert acc["additive"] < 0.6, acc
    assert all(acc[k] >= 0.95 for k in ("multiplicative", "tensor", "lowrank")), acc
