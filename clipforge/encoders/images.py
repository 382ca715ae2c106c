"""Decode untrusted image bytes into RGB PIL images, correctly and defensively.

Handles every PIL mode real web data has (RGBA, LA, P with transparency, L, 1, CMYK, I;16, I, F),
applies EXIF orientation, refuses decompression bombs before decoding pixels, and uses JPEG draft
mode so a huge JPEG is decoded at reduced scale when only a small image is needed.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own warning threshold (~0.25 GiB of RGBA)
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")


def draft_size(preprocess: dict[str, Any]) -> int:
    """The JPEG draft size for a model's preprocess settings: twice the input size, so draft mode's 1/2..1/8
    scale decode still leaves the resize (bicubic, antialiased) enough pixels to work from."""
    return int(preprocess["image_size"]) * 2


class ImageDecodeError(ValueError):
    """The bytes are not a usable image; `reason` is a short machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _flatten_alpha(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    rgba = im.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, background + (255,))
    canvas.alpha_composite(rgba)
    return canvas.convert("RGB")


def _high_bit_depth_to_rgb(im: Image.Image) -> Image.Image:
    # PIL's convert("RGB") clips 16-bit/float values at 255 (a white image); rescale instead.
    arr = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = (arr - lo) / (hi - lo if hi > lo else 1.0) * 255.0
    else:
        # I;16*: 16-bit by its mode, however dark (a maximum <= 255 is a near-black image, not 8-bit data);
        # plain I (32-bit ints) says nothing of its range: values above 255 are read as 16-bit
        sixteen = im.mode.startswith("I;16")
        arr = arr / 257.0 if sixteen or arr.max() > 255 else arr
    arr8 = np.clip(arr, 0, 255).astype(np.uint8)
    return Image.fromarray(arr8, mode="L").convert("RGB")


def to_rgb(im: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels are composited onto `background`."""
    if im.mode == "RGB":
        return im
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _flatten_alpha(im, background)
    if im.mode.startswith("I") or im.mode == "F":
        return _high_bit_depth_to_rgb(im)
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def load_image(
    source: bytes | str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode `source` (bytes or a path) into an RGB image, or raise ImageDecodeError."""
    return decode_image(source, max_pixels=max_pixels, draft_size=draft_size)[0]


def decode_image(
    source: bytes | str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """`load_image`, plus the stored image's (width, height) as displayed (EXIF orientation applied), which
    a draft-mode decode no longer has."""
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes | bytearray) else open(source, "rb")  # noqa: SIM115
    except OSError as exn:
        reason = (exn.strerror or str(exn)).lower()  # not Python's "[Errno 13] Permission denied: 'x'"
        raise ImageDecodeError("unreadable", f"cannot read image file {exn.filename}: {reason}") from exn
    if isinstance(source, bytes | bytearray) and len(source) == 0:
        raise ImageDecodeError("empty", "empty image data")
    with fp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(fp)
                w, h = im.size
                if w <= 0 or h <= 0:
                    raise ImageDecodeError("undecodable", "image has zero size")
                if w * h > max_pixels:
                    raise ImageDecodeError(
                        "too_large", f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}"
                    )
                if draft_size and im.format == "JPEG":
                    im.draft("RGB", (draft_size, draft_size))  # decode at 1/2..1/8 scale when possible
                im.load()
                if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # a quarter turn: width and height swap
                    w, h = h, w
                return to_rgb(ImageOps.exif_transpose(im)), (w, h)
        except ImageDecodeError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exn:
            raise ImageDecodeError("too_large", f"decompression bomb refused: {exn}") from exn
        except UnidentifiedImageError as exn:
            raise ImageDecodeError("undecodable", "not a recognised image format") from exn
        except (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError) as exn:
            # truncated or corrupt data surfaces as OSError ("image file is truncated") and friends
            raise ImageDecodeError("undecodable", f"corrupt or truncated image: {exn}") from exn
