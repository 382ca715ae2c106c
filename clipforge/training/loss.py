"""Contrastive losses on L2-normalised features.

Both raise as soon as the loss is not finite, so a diverging run stops before it writes a bad checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class NonFiniteLossError(FloatingPointError):
    pass


def check_finite(loss: torch.Tensor, step: int | None = None) -> torch.Tensor:
    if not torch.isfinite(loss).all():
        where = f" at step {step}" if step is not None else ""
        raise NonFiniteLossError(f"loss is {loss.item()}{where}: stopping; the last checkpoint is intact")
    return loss


def clip_loss(
    image_features: torch.Tensor,  # [B, D]
    text_features: torch.Tensor,  # [B, D]
    logit_scale: torch.Tensor,  # scalar, already exp()'d and clamped
) -> torch.Tensor:
    """Symmetric InfoNCE: the mean of image->text and text->image cross-entropy, pairs on the diagonal."""
    logits_per_image = logit_scale * image_features @ text_features.T  # [B, B]
    labels = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_image.T, labels)) / 2


def siglip_loss(
    image_features: torch.Tensor,  # [B, D]
    text_features: torch.Tensor,  # [B, D]
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
) -> torch.Tensor:
    """SigLIP: independent binary classification of every (image, text) pair; +1 on the diagonal."""
    logits = logit_scale * image_features @ text_features.T + logit_bias  # [B, B]
    n = logits.shape[0]
    signs = 2 * torch.eye(n, device=logits.device, dtype=logits.dtype) - 1  # [B, B], +1 diag / -1 off
    return -F.logsigmoid(signs * logits).sum() / n


def contrastive_loss(
    kind: str,
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    # features come out of autocast possibly in bf16: compute the loss in fp32
    image_features, text_features = image_features.float(), text_features.float()
    if kind == "clip":
        return clip_loss(image_features, text_features, logit_scale.float())
    if kind == "siglip":
        if logit_bias is None:
            raise ValueError("siglip loss needs a model with logit_bias")
        return siglip_loss(image_features, text_features, logit_scale.float(), logit_bias.float())
    raise ValueError(f"unknown loss kind {kind!r} (expected 'clip' or 'siglip')")


def scaled_logit_scale(raw: torch.Tensor, max_scale: float = 100.0) -> torch.Tensor:
    """exp() of the learned log-scale, clamped so the scale never exceeds `max_scale`.

    The clamp is applied to the parameter too (see `clamp_logit_scale_`), as in CLIP, so the parameter
    cannot drift far above the cap and then need many steps to come back.
    """
    return raw.exp().clamp(max=max_scale)


@torch.no_grad()
def clamp_logit_scale_(raw: torch.nn.Parameter, max_scale: float = 100.0) -> None:
    raw.clamp_(max=float(torch.log(torch.tensor(max_scale))))
