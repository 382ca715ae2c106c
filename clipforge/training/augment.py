"""Training-time image augmentation, made cheap for CPU data workers.

Matches open_clip's training transform (RandomResizedCrop with scale (0.9, 1.0), bicubic, then normalise)
but: crop + resize is one PIL call, the crop box is drawn with Python's `random` (torchvision draws it with
tensor ops, which dominated our worker profile), workers hand over uint8 tensors (4x less to copy between
processes), and normalisation runs once per batch in the training process.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch
from PIL import Image

INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def crop_box(
    w: int, h: int, scale: tuple[float, float], ratio: tuple[float, float], rng: random.Random
) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box: area fraction in `scale`, aspect ratio log-uniform in `ratio`."""
    area = w * h
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return x, y, x + cw, y + ch
    in_ratio = w / h  # fallback (as torchvision): the largest central crop with an allowed aspect ratio
    cw, ch = (
        (w, round(w / ratio[0])) if in_ratio < ratio[0] else (round(h * ratio[1]), h) if in_ratio > ratio[1] else (w, h)
    )
    x, y = (w - cw) // 2, (h - ch) // 2
    return x, y, x + cw, y + ch


class TrainTransform:
    """PIL RGB image -> uint8 tensor [3, S, S] with a random resized crop."""

    def __init__(
        self,
        size: int,
        interpolation: str = "bicubic",
        scale: tuple[float, float] = (0.9, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        self.size, self.scale, self.ratio = size, scale, ratio
        self.resample = INTERPOLATIONS.get(interpolation, Image.Resampling.BICUBIC)
        self.rng = random.Random()
        self._seed: int | None = None

    def __call__(self, im: Image.Image) -> torch.Tensor:
        seed = torch.initial_seed()  # per DataLoader worker, derived from the run's seed: reproducible crops
        if seed != self._seed:
            self._seed = seed
            self.rng.seed(seed)
        box = crop_box(im.width, im.height, self.scale, self.ratio, self.rng)
        out = im.resize((self.size, self.size), self.resample, box=box)
        return torch.from_numpy(np.asarray(out, dtype=np.uint8).copy()).permute(2, 0, 1)  # [3, S, S]


def normalizer(pp: dict[str, Any], device: torch.device) -> Any:
    mean = torch.tensor(pp["mean"], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(pp["std"], device=device).view(1, 3, 1, 1) * 255

    def normalize(images: torch.Tensor) -> torch.Tensor:  # uint8 [B, 3, H, W] -> float [B, 3, H, W]
        return (images.float() - mean) / std

    return normalize
