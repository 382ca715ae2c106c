"""AdamW with the usual exclusions from weight decay, and a cosine schedule with linear warmup."""

from __future__ import annotations

import math

import torch


def no_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Biases, norm gains, embeddings, and logit scale/bias are not decayed (as in CLIP/open_clip)."""
    return (
        param.ndim < 2
        or "bn" in name
        or "ln" in name
        or "norm" in name
        or "bias" in name
        or "logit_scale" in name
        or "embedding" in name
        or name.endswith("class_embedding")
        or "positional_embedding" in name
    )


def make_optimizer(
    model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], eps: float
) -> torch.optim.AdamW:
    decay, exempt = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (exempt if no_decay(name, p) else decay).append(p)
    groups = [{"params": exempt, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
    # The fused kernel makes one pass over each parameter and its moments instead of ~8 (foreach), which
    # matters with a 49k-token embedding (measured: benchmarks/RESULTS.md, "Trainer throughput").
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in decay + exempt)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)


def lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warmup to base_lr over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * base_lr * (1 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
