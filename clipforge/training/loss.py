"""Contrastive losses on L2-normalised features, over the global batch.

The formulas live here once. Under torchrun each rank scores its own rows against the columns gathered from
every rank (with gradients), as open_clip's `ClipLoss(local_loss=True, gather_with_grad=True)`: the summed
gradients equal those of the loss over the whole global batch. Without a process group the gather is the
identity and the columns are the rank's own.

The loss does not check itself for NaN: that would sync with the device every step. The loop checks a
running flag at log, checkpoint and evaluation steps (`check_finite`), before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from clipforge.training.distributed import DistInfo, gather_with_grad


class NonFiniteLossError(FloatingPointError):
    pass


def check_finite(loss: torch.Tensor, step: int | None = None) -> torch.Tensor:
    if not torch.isfinite(loss).all():
        where = f" at step {step}" if step is not None else ""
        raise NonFiniteLossError(f"loss is {loss.item()}{where}: stopping; the last checkpoint is intact")
    return loss


class FiniteWatch:
    """Whether every step since the last check had a finite loss, kept on the device: adding a step's flag
    queues one kernel, and only `check` waits for the device."""

    def __init__(self, device: torch.device, step: int = 0) -> None:
        self.ok = torch.ones((), dtype=torch.bool, device=device)
        self.checked = step  # the last step known good

    def add(self, finite: torch.Tensor) -> None:
        self.ok &= finite

    def check(self, step: int) -> None:
        if not bool(self.ok):
            steps = f"step {step}" if step == self.checked + 1 else f"one of steps {self.checked + 1}..{step}"
            raise NonFiniteLossError(
                f"loss or gradient not finite at {steps}: stopping; the last checkpoint is "
                f"intact (none is written after step {self.checked})"
            )
        self.checked = step


def clip_loss(
    image_features: torch.Tensor,  # [B, D] this rank's rows
    text_features: torch.Tensor,  # [B, D]
    logit_scale: torch.Tensor,  # scalar, already exp()'d and clamped
    all_image_features: torch.Tensor | None = None,  # [W*B, D] every rank's rows; None: one process
    all_text_features: torch.Tensor | None = None,
    offset: int = 0,  # where this rank's rows start among the gathered ones
) -> torch.Tensor:
    """Symmetric InfoNCE: the mean of image->text and text->image cross-entropy, pairs on the diagonal."""
    all_text = text_features if all_text_features is None else all_text_features
    logits_per_image = logit_scale * image_features @ all_text.T  # [B, W*B]
    if all_image_features is None:
        logits_per_text = logits_per_image.T  # [B, B]
    else:
        logits_per_text = logit_scale * text_features @ all_image_features.T  # [B, W*B]
    labels = torch.arange(image_features.shape[0], device=image_features.device) + offset
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def siglip_loss(
    image_features: torch.Tensor,  # [B, D]
    text_features: torch.Tensor,  # [B, D]
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    all_text_features: torch.Tensor | None = None,  # [W*B, D]; None: one process
    offset: int = 0,
) -> torch.Tensor:
    """SigLIP: independent binary classification of every (image, text) pair; +1 on the diagonal."""
    all_text = text_features if all_text_features is None else all_text_features
    logits = logit_scale * image_features @ all_text.T + logit_bias  # [B, W*B]
    b = logits.shape[0]
    signs = -torch.ones_like(logits)  # -1 off the diagonal ...
    signs[torch.arange(b), torch.arange(b) + offset] = 1.0  # ... +1 on this rank's pairs
    return -F.logsigmoid(signs * logits).sum() / b


@dataclass(frozen=True)
class ContrastiveLoss:
    """`kind` ("clip" or "siglip") over the global batch of the process group in `info`."""

    kind: str = "clip"
    info: DistInfo = field(default_factory=DistInfo)

    def __post_init__(self) -> None:
        if self.kind not in ("clip", "siglip"):
            raise ValueError(f"unknown loss kind {self.kind!r} (expected 'clip' or 'siglip')")

    def __call__(
        self,
        image_features: torch.Tensor,  # [B, D]
        text_features: torch.Tensor,  # [B, D]
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # features come out of autocast possibly in bf16: compute the loss in fp32
        img, txt, scale = image_features.float(), text_features.float(), logit_scale.float()
        all_img = all_txt = None
        offset = 0
        if self.info.enabled:
            all_img, all_txt = gather_with_grad(img, self.info), gather_with_grad(txt, self.info)  # [W*B, D]
            offset = self.info.rank * img.shape[0]
        if self.kind == "clip":
            return clip_loss(img, txt, scale, all_img, all_txt, offset)
        if logit_bias is None:
            raise ValueError("siglip loss needs a model with logit_bias")
        return siglip_loss(img, txt, scale, logit_bias.float(), all_txt, offset)


def contrastive_loss(
    kind: str,
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss of one process's batch (no process group)."""
    return ContrastiveLoss(kind)(image_features, text_features, logit_scale, logit_bias)


def scaled_logit_scale(raw: torch.Tensor, max_scale: float = 100.0) -> torch.Tensor:
    """exp() of the learned log-scale, clamped so the scale never exceeds `max_scale`.

    The clamp is applied to the parameter too (see `clamp_logit_scale_`), as in CLIP, so the parameter
    cannot drift far above the cap and then need many steps to come back.
    """
    return raw.exp().clamp(max=max_scale)


@torch.no_grad()
def clamp_logit_scale_(raw: torch.nn.Parameter, max_scale: float = 100.0) -> None:
    raw.clamp_(max=float(torch.log(torch.tensor(max_scale))))
