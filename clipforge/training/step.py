"""One optimisation step: forward, global contrastive loss, backward, clip, update.

With `accum > 1` the batch is split into micro-batches without losing negatives (as open_clip's
--accum-freq / GradCache): features of all micro-batches are first computed without gradients, then each
micro-batch is recomputed with gradients against the cached rest. Memory scales with the micro-batch,
the loss and its gradient are those of the full batch.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F

from clipforge.encoders.device import autocast
from clipforge.training.distributed import DistInfo, gather_with_grad
from clipforge.training.loss import check_finite, clamp_logit_scale_, contrastive_loss, scaled_logit_scale


def global_loss(
    kind: str, img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, info: DistInfo
) -> torch.Tensor:
    """Loss over the global batch: local rows against all gathered columns (gradients equal the global loss)."""
    if not info.enabled:
        return contrastive_loss(kind, img, txt, scale, bias)
    img, txt = img.float(), txt.float()
    all_img, all_txt = gather_with_grad(img, info), gather_with_grad(txt, info)  # [W*B, D]
    b = img.shape[0]
    labels = torch.arange(b, device=img.device) + info.rank * b
    if kind == "clip":
        loss_i = F.cross_entropy(scale * img @ all_txt.T, labels)  # [B, W*B]
        loss_t = F.cross_entropy(scale * txt @ all_img.T, labels)
        return (loss_i + loss_t) / 2
    assert bias is not None
    logits = scale * img @ all_txt.T + bias.float()  # [B, W*B]
    signs = -torch.ones_like(logits)
    signs[torch.arange(b), labels] = 1.0
    return -F.logsigmoid(signs * logits).sum() / b


def _sync_context(ddp_model: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """DDP's no_sync() unless `sync` (also through a torch.compile wrapper); a no-op without DDP."""
    inner = getattr(ddp_model, "_orig_mod", ddp_model)
    if sync or not hasattr(inner, "no_sync"):
        return contextlib.nullcontext()
    return inner.no_sync()


def train_step(
    model: torch.nn.Module,
    ddp_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    images: torch.Tensor,  # [B, 3, H, W]
    texts: torch.Tensor,  # [B, L]
    *,
    kind: str,
    max_scale: float,
    grad_clip: float,
    device: torch.device,
    precision: str,
    info: DistInfo,
    accum: int = 1,
    step: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (loss, logit scale), both detached."""
    optimizer.zero_grad(set_to_none=True)
    bias = getattr(model, "logit_bias", None)
    if accum <= 1:
        with autocast(device, precision):
            out = ddp_model(images, texts)  # image_features, text_features: [B, D], L2-normalised
        scale = scaled_logit_scale(model.logit_scale, max_scale)
        loss = check_finite(global_loss(kind, out["image_features"], out["text_features"], scale, bias, info), step)
        scaler.scale(loss).backward()
    else:
        img_chunks, txt_chunks = images.chunk(accum), texts.chunk(accum)
        with torch.no_grad(), autocast(device, precision):  # pass 1: features of every micro-batch, no graph
            cached = [model(i, t) for i, t in zip(img_chunks, txt_chunks, strict=True)]
        cached_img = [c["image_features"].float() for c in cached]
        cached_txt = [c["text_features"].float() for c in cached]
        loss = torch.zeros(())
        for j, (i, t) in enumerate(zip(img_chunks, txt_chunks, strict=True)):
            last = j == accum - 1
            # DDP: gradients add up locally and are averaged across ranks once, in the last backward
            with _sync_context(ddp_model, last):
                with autocast(device, precision):
                    out = ddp_model(i, t)  # pass 2: micro-batch j with gradients
                img = torch.cat([*cached_img[:j], out["image_features"].float(), *cached_img[j + 1 :]])  # [B, D]
                txt = torch.cat([*cached_txt[:j], out["text_features"].float(), *cached_txt[j + 1 :]])
                raw_scale = scaled_logit_scale(model.logit_scale, max_scale)
                # the temperature's (and bias's) gradient is counted once, in the synchronised last pass
                scale = raw_scale if last else raw_scale.detach()
                b = bias if (bias is None or last) else bias.detach()
                loss = check_finite(global_loss(kind, img, txt, scale, b, info), step)
                scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if precision != "fp16":
            check_finite(grad_norm, step)
    scaler.step(optimizer)
    scaler.update()
    clamp_logit_scale_(model.logit_scale, max_scale)
    return loss.detach(), scaled_logit_scale(model.logit_scale.detach(), max_scale)
