"""Image preparation for inference, one path for the index, the service and its decode workers.

Untrusted bytes -> decode (`encoders.images`, with the bundle's JPEG draft size and a pixel limit) -> the
eval transform split in two: per-image PIL steps, then one float conversion + normalisation per batch.

Where decoding shares cores with the encoder (index build, the service) converting to float and normalising
once per batch instead of per image saves CPU; the result is the same to the bit as the whole transform
(the ops ToTensor + Normalize use, in the same order). Light on imports: torch/torchvision load on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipforge.encoders.images import DEFAULT_MAX_PIXELS, decode_image, draft_size

Prepared = Any  # uint8 [H, W, 3] pixels (np.ndarray), or a float [3, H, W] tensor when the transform can't split


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


class ImagePrep:
    """Image bytes -> prepared pixels for a model's preprocess settings (bundle.json's "preprocess").

    `decode` and `prepare` give uint8 [H, W, 3] arrays (4x fewer bytes than float32 to send between processes)
    when the eval transform ends with ToTensor + Normalize; `batch` turns a list of them into the model's input
    with the same ops, so the pixels are the same to the bit as the whole transform gives."""

    def __init__(self, preprocess: dict[str, Any], max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        from clipforge.encoders.model import image_transform

        self.preprocess, self.max_pixels = preprocess, max_pixels
        self.draft_size = draft_size(preprocess)
        self.transform = image_transform(preprocess, train=False)
        split = split_transform(self.transform)
        self.pil_steps: Any = split[0] if split else None
        self.normalize: Any = split[1] if split else None

    def prepare(self, image: Any) -> Prepared:
        """An RGB PIL image -> prepared pixels."""
        if self.pil_steps is not None:
            small = self.pil_steps(image)
            if small.mode == "RGB":
                return np.asarray(small)  # [H, W, 3] uint8
        return self.transform(image)  # [3, H, W] float32

    def decode(self, source: bytes | str | Path) -> tuple[Prepared, tuple[int, int]]:
        """(prepared pixels, the stored image's displayed (width, height)); raises ImageDecodeError (or whatever
        a codec raises) for a bad image."""
        image, size = decode_image(source, max_pixels=self.max_pixels, draft_size=self.draft_size)
        return self.prepare(image), size

    def __call__(self, source: bytes | str | Path) -> Prepared:
        return self.decode(source)[0]

    def batch(self, pixels: Sequence[Prepared]) -> Any:
        """[N, 3, H, W] float32 model input from prepared pixels; None for none."""
        return to_batch(pixels, self.normalize)
