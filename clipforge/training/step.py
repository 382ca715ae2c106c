"""One optimisation step: forward, global contrastive loss, backward, clip, update.

With `accum > 1` the batch is split into micro-batches without losing negatives (as open_clip's
--accum-freq / GradCache): features of all micro-batches are first computed without gradients, then each
micro-batch is recomputed with gradients against the cached rest. Memory scales with the micro-batch,
the loss and its gradient are those of the full batch.

Nothing here reads a value back from the device: the step returns tensors, and the loop looks at them
only at log steps (a `.item()` or an `if` on a CUDA tensor waits for every queued kernel).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from clipforge.encoders.device import autocast
from clipforge.training.config import Config
from clipforge.training.loss import ContrastiveLoss, clamp_logit_scale_, scaled_logit_scale
from clipforge.training.setup import Runtime
from clipforge.training.state import TrainState


@dataclass(frozen=True)
class StepCfg:
    loss: ContrastiveLoss  # kind and process group
    device: torch.device
    precision: str = "fp32"
    max_scale: float = 100.0  # cap on exp(logit_scale)
    grad_clip: float = 0.0  # max global grad norm; 0 disables
    accum: int = 1  # micro-batches per step

    @classmethod
    def from_config(cls, cfg: Config, rt: Runtime) -> StepCfg:
        return cls(
            ContrastiveLoss(cfg.loss.kind, rt.info),
            rt.device,
            rt.precision,
            cfg.loss.max_logit_scale,
            cfg.optim.grad_clip,
            cfg.train.accum,
        )


@dataclass(frozen=True)
class StepOut:
    loss: torch.Tensor  # detached, on the device
    logit_scale: torch.Tensor  # exp()'d and clamped, detached
    finite: torch.Tensor  # bool: the loss (and, unless fp16, the gradient norm) was finite in every pass


def _sync_context(ddp_model: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """DDP's no_sync() unless `sync` (also through a torch.compile wrapper); a no-op without DDP."""
    inner = getattr(ddp_model, "_orig_mod", ddp_model)
    if sync or not hasattr(inner, "no_sync"):
        return contextlib.nullcontext()
    return inner.no_sync()


def train_step(
    state: TrainState,
    images: torch.Tensor,  # [B, 3, H, W]
    texts: torch.Tensor,  # [B, L]
    cfg: StepCfg,
) -> StepOut:
    model, optimizer, scaler = state.model, state.optimizer, state.scaler
    optimizer.zero_grad(set_to_none=True)
    bias = getattr(model, "logit_bias", None)
    if cfg.accum <= 1:
        with autocast(cfg.device, cfg.precision):
            out = state.wrapped(images, texts)  # image_features, text_features: [B, D], L2-normalised
        scale = scaled_logit_scale(model.logit_scale, cfg.max_scale)
        loss = cfg.loss(out["image_features"], out["text_features"], scale, bias)
        finite = torch.isfinite(loss)
        scaler.scale(loss).backward()
    else:
        # chunk() may return fewer pieces than asked (a batch of 6 in 4 gives 3): count the pieces it made
        img_chunks, txt_chunks = images.chunk(cfg.accum), texts.chunk(cfg.accum)
        with torch.no_grad(), autocast(cfg.device, cfg.precision):  # pass 1: features of every micro-batch, no graph
            cached = [model(i, t) for i, t in zip(img_chunks, txt_chunks, strict=True)]
        cached_img = [c["image_features"].float() for c in cached]
        cached_txt = [c["text_features"].float() for c in cached]
        finite = torch.ones((), dtype=torch.bool, device=images.device)
        for j, (i, t) in enumerate(zip(img_chunks, txt_chunks, strict=True)):
            last = j == len(img_chunks) - 1
            # DDP: gradients add up locally and are averaged across ranks once, in the last backward
            with _sync_context(state.wrapped, last):
                with autocast(cfg.device, cfg.precision):
                    out = state.wrapped(i, t)  # pass 2: micro-batch j with gradients
                img = torch.cat([*cached_img[:j], out["image_features"].float(), *cached_img[j + 1 :]])  # [B, D]
                txt = torch.cat([*cached_txt[:j], out["text_features"].float(), *cached_txt[j + 1 :]])
                raw_scale = scaled_logit_scale(model.logit_scale, cfg.max_scale)
                # the temperature's (and bias's) gradient is counted once, in the synchronised last pass
                scale = raw_scale if last else raw_scale.detach()
                b = bias if (bias is None or last) else bias.detach()
                loss = cfg.loss(img, txt, scale, b)
                finite = finite & torch.isfinite(loss)
                scaler.scale(loss).backward()
    if cfg.grad_clip > 0:
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if cfg.precision != "fp16":  # with fp16 an inf norm is routine: GradScaler skips the step
            finite = finite & torch.isfinite(grad_norm)
    scaler.step(optimizer)
    scaler.update()
    clamp_logit_scale_(model.logit_scale, cfg.max_scale)
    return StepOut(loss.detach(), scaled_logit_scale(model.logit_scale.detach(), cfg.max_scale), finite)
