"""`clipforge data synth`: a captioned coloured-shapes set for demos and tests.

Training shards never show the held-out colour+shape combinations; the folder-per-class zero-shot set
contains all of them, so zero-shot top-1 on held-out classes measures compositional generalisation.
"""

from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path

import webdataset as wds
from PIL import Image, ImageDraw
from tqdm import tqdm

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (140, 50, 180),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "cross", "ring")
HELDOUT = (
    ("red", "circle"),
    ("green", "square"),
    ("blue", "triangle"),
    ("yellow", "cross"),
    ("purple", "ring"),
    ("orange", "square"),
)
POSITIONS = {"left": (0.3, 0.5), "right": (0.7, 0.5), "top": (0.5, 0.3), "bottom": (0.5, 0.7), "middle": (0.5, 0.5)}
TEMPLATES = (
    "a {color} {shape}",
    "a photo of a {size} {color} {shape}",
    "a {shape} coloured {color}",
    "{color} {shape} on a grey background",
    "there is a {color} {shape} on the {pos}",
    "a {size} {shape}, {color}",
    "an image showing a {color} {shape}",
    "the {shape} is {color}",
    "a drawing of a {color} {shape} in the {pos}",
    "{size} {color} {shape}",
)


def class_name(color: str, shape: str) -> str:
    return f"{color} {shape}"


def draw_shape(color: str, shape: str, rng: random.Random, size: int = 64) -> tuple[Image.Image, dict]:
    bg = rng.randint(70, 190)
    im = Image.new("RGB", (size, size), (bg, bg, bg))
    d = ImageDraw.Draw(im)
    pos = rng.choice(list(POSITIONS))
    big = rng.random() < 0.5
    r = size * (rng.uniform(0.22, 0.3) if big else rng.uniform(0.12, 0.18))
    cx = size * POSITIONS[pos][0] + rng.uniform(-3, 3)
    cy = size * POSITIONS[pos][1] + rng.uniform(-3, 3)
    fill = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in COLORS[color])
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "ring":
        d.ellipse(box, outline=fill, width=max(2, int(r / 3)))
    elif shape == "square":
        d.rectangle(box, fill=fill)
    elif shape == "triangle":
        a = rng.uniform(-0.3, 0.3)
        pts = [
            (cx + r * math.sin(a + k * 2 * math.pi / 3), cy - r * math.cos(a + k * 2 * math.pi / 3)) for k in range(3)
        ]
        d.polygon(pts, fill=fill)
    elif shape == "cross":
        t = r / 3
        d.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fill)
        d.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fill)
    attrs = {"color": color, "shape": shape, "pos": pos, "size": "large" if big else "small"}
    return im, attrs


def caption_for(attrs: dict, rng: random.Random) -> str:
    return rng.choice(TEMPLATES).format(**attrs)


def jpeg_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_synth(
    out: str | Path, *, train: int = 20_000, val: int = 1000, per_class: int = 20, shard_size: int = 1000, seed: int = 0
) -> dict:
    """Write train/ and val/ shards and a zeroshot/ folder-per-class set under `out`; returns a summary."""
    out = Path(out)
    rng = random.Random(seed)
    seen = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in HELDOUT]
    for split in ("train", "val"):
        (out / split).mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, n in (("train", train), ("val", val)):
        pattern = str(out / split / "shard-%06d.tar")
        # integer mtime: a float one costs a PAX header per member (twice the tar parsing) and varies run to run
        with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0, mtime=0) as sink:
            for i in tqdm(range(n), desc=f"synth {split}", unit="img", mininterval=1.0):
                color, shape = rng.choice(seen)
                im, attrs = draw_shape(color, shape, rng)
                sink.write(
                    {
                        "__key__": f"{i:08d}",
                        "jpg": jpeg_bytes(im),
                        "txt": caption_for(attrs, rng),
                        "json": json.dumps(attrs),
                    }
                )
        counts[split] = n
    zs = out / "zeroshot"
    for color in COLORS:
        for shape in SHAPES:
            d = zs / class_name(color, shape).replace(" ", "_")
            d.mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                im, _ = draw_shape(color, shape, rng)
                im.save(d / f"{j:04d}.jpg", quality=90)
    heldout = [class_name(c, s) for c, s in HELDOUT]
    (zs / "subsets.json").write_text(json.dumps({"heldout": heldout}, indent=2))
    n_train_shards = len(list((out / "train").glob("*.tar")))
    summary = {
        "train": f"{out / 'train'}/shard-{{000000..{n_train_shards - 1:06d}}}.tar",
        "val": f"{out / 'val'}/shard-{{000000..{len(list((out / 'val').glob('*.tar'))) - 1:06d}}}.tar",
        "zeroshot": str(zs),
        "classes": len(COLORS) * len(SHAPES),
        "heldout_classes": heldout,
        "counts": counts,
    }
    (out / "synth.json").write_text(json.dumps(summary, indent=2))
    return summary
