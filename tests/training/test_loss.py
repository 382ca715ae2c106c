import math

import pytest
import torch
from open_clip.loss import ClipLoss, SigLipLoss

from clipforge.training.loss import (
    NonFiniteLossError,
    check_finite,
    clamp_logit_scale_,
    contrastive_loss,
    scaled_logit_scale,
)


def features(b=16, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=-1)
    return img, txt


def test_clip_loss_equals_open_clip():
    img, txt = features()
    scale = torch.tensor(1 / 0.07)
    ours = contrastive_loss("clip", img, txt, scale)
    theirs = ClipLoss()(img, txt, scale)
    assert abs(float(ours) - float(theirs)) < 1e-6


def test_siglip_loss_equals_open_clip():
    img, txt = features(seed=1)
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    ours = contrastive_loss("siglip", img, txt, scale, bias)
    theirs = SigLipLoss()(img, txt, scale, bias)
    assert abs(float(ours) - float(theirs)) < 1e-5


def test_gradient_reaches_logit_scale_and_init_is_clip():
    raw = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    img, txt = features()
    loss = contrastive_loss("clip", img, txt, scaled_logit_scale(raw))
    loss.backward()
    assert raw.grad is not None and raw.grad.abs() > 0
    assert abs(float(raw.exp()) - 1 / 0.07) < 1e-4


def test_scale_is_clamped_at_100_in_forward_and_parameter():
    raw = torch.nn.Parameter(torch.tensor(7.0))  # exp(7) ~ 1097
    assert float(scaled_logit_scale(raw)) == pytest.approx(100.0)
    clamp_logit_scale_(raw)
    assert float(raw.exp()) == pytest.approx(100.0, rel=1e-5)


def test_perfect_alignment_gives_low_loss_and_random_does_not():
    img, _ = features(b=8, d=64)
    aligned = contrastive_loss("clip", img, img, torch.tensor(100.0))
    img2, txt2 = features(b=8, d=64, seed=5)
    random_pairs = contrastive_loss("clip", img2, txt2, torch.tensor(100.0))
    assert float(aligned) < 0.01 < float(random_pairs)


def test_non_finite_loss_raises():
    with pytest.raises(NonFiniteLossError, match="step 7"):
        check_finite(torch.tensor(float("nan")), step=7)


def test_unknown_kind():
    img, txt = features()
    with pytest.raises(ValueError):
        contrastive_loss("triplet", img, txt, torch.tensor(1.0))
