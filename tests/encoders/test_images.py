import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from clipforge.encoders.images import ImageDecodeError, decode_image, load_image


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def huge_png(width: int, height: int) -> bytes:
    """A real, valid grayscale PNG of width x height (all black), built by streaming zlib: ~1 MB on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    parts = [comp.compress(row * 1000) for _ in range(height // 1000)]
    parts.append(comp.compress(row * (height % 1000)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def test_palette_png_with_transparency_is_composited_on_white():
    im = Image.new("P", (8, 8), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.paste(1, (0, 0, 4, 8))  # left half red, right half palette index 0 = transparent black
    im.info["transparency"] = 0
    out = load_image(encode(im, "PNG", transparency=0))
    assert out.mode == "RGB"
    assert out.getpixel((1, 1)) == (255, 0, 0)
    assert out.getpixel((6, 1)) == (255, 255, 255)  # not the black hidden under the transparency


def test_rgba_alpha_is_flattened():
    im = Image.new("RGBA", (4, 4), (0, 0, 255, 0))
    out = load_image(encode(im, "PNG"))
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_jpeg_becomes_rgb():
    im = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    out = load_image(encode(im, "JPEG", quality=95))
    r, g, b = out.getpixel((8, 8))
    assert out.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_16bit_grayscale_is_rescaled_not_clipped():
    arr = np.full((8, 8), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    out = load_image(encode(Image.fromarray(arr), "PNG"))
    assert abs(out.getpixel((0, 0))[0] - 127) <= 1  # PIL's plain convert would give 255


def test_a_dark_16bit_image_stays_dark():
    """A 16-bit image whose brightest pixel is 200 (of 65,535) was read as 8-bit data: bright grey."""
    arr = np.full((8, 8), 200, dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode == "I;16"
    assert load_image(buf.getvalue()).getpixel((0, 0)) == (0, 0, 0)  # 200 / 257 < 1


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (20, 10), (0, 200, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = load_image(encode(im, "JPEG", exif=exif.tobytes()))
    assert out.size == (10, 20)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_decode_image_reports_the_stored_size_as_displayed(orientation):
    """A draft-mode decode shrinks the pixels; the size reported is the stored image's, turned like them."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.new("RGB", (800, 400), (0, 200, 0)), "JPEG", exif=exif.tobytes())
    image, size = decode_image(data, draft_size=96)
    turned = orientation in (6, 8)
    assert size == ((400, 800) if turned else (800, 400))
    assert max(image.size) < 800 and (image.size[0] < image.size[1]) == turned  # decoded at reduced scale


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\xff\xd8\xff\xe0" + b"\x00" * 40])
def test_garbage_raises_clear_error(data):
    with pytest.raises(ImageDecodeError):
        load_image(data)


def test_truncated_jpeg_raises():
    full = encode(Image.new("RGB", (64, 64), (10, 20, 30)), "JPEG")
    with pytest.raises(ImageDecodeError) as err:
        load_image(full[: len(full) // 2])
    assert err.value.reason == "undecodable"


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(ImageDecodeError) as err:
        load_image(huge_png(30_000, 30_000))
    assert err.value.reason == "too_large"


def test_jpeg_draft_decodes_large_images_smaller():
    big = encode(Image.new("RGB", (2000, 1000), (1, 2, 3)), "JPEG")
    assert load_image(big, draft_size=300).size[0] < 2000


def test_an_image_file_that_cannot_be_read_is_named_without_python_errno_text(tmp_path):
    """`cannot read image file: [Errno 2] No such file or directory: 'x'` now reads as one plain sentence."""
    missing = tmp_path / "nope.png"
    with pytest.raises(ImageDecodeError) as err:
        load_image(missing)
    assert str(err.value) == f"cannot read image file {missing}: no such file or directory"
    assert err.value.reason == "unreadable"
