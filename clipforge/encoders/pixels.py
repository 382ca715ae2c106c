"""Eval preprocessing split in two: per-image PIL steps, then one float conversion + normalisation per batch.

Where decoding shares cores with the encoder (index build, the service) converting to float and normalising
once per batch instead of per image saves CPU; the result is the same to the bit as the whole transform
(the ops ToTensor + Normalize use, in the same order). Light on imports: torch/torchvision load on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def split_transform(transform: Any) -> tuple[Any, Any] | None:
    """(PIL steps, Normalize) when the transform ends with ToTensor + Normalize (open_clip's eval transform);
    None for any other transform: then use it whole."""
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", []))
    if len(steps) < 3 or type(steps[-2]).__name__ not in ("ToTensor", "MaybeToTensor"):
        return None
    if not isinstance(steps[-1], T.Normalize):
        return None
    return T.Compose(steps[:-2]), steps[-1]


def to_batch(pixels: Sequence[Any], normalize: Any) -> Any:
    """[N, 3, H, W] float32 from per-image uint8 [H, W, 3] arrays (converted and normalised here, for the whole
    batch at once) or float [3, H, W] tensors (already transformed); None for no pixels."""
    import torch

    raw = [j for j, px in enumerate(pixels) if isinstance(px, np.ndarray)]
    if not raw:
        return torch.stack(list(pixels)) if pixels else None
    u8 = torch.from_numpy(np.stack([pixels[j] for j in raw]))  # [r, H, W, 3] uint8
    batch = normalize(u8.permute(0, 3, 1, 2).contiguous().to(torch.float32).div(255))  # as ToTensor, Normalize
    if len(raw) == len(pixels):
        return batch
    out = list(pixels)
    for j, row in zip(raw, batch, strict=True):
        out[j] = row
    return torch.stack(out)
