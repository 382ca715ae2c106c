"""A small in-memory stand-in for `index.Index` (same API, exact search), for tests of the routers."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from clipforge.index.types import Hit, Item  # the real result types: the fake differs only in how it searches

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 215, 40)}
SHAPES = ("circle", "square")


def png_bytes(
    color: tuple[int, int, int] = (200, 30, 30),
    size: tuple[int, int] = (48, 48),
    shape: str = "circle",
    fmt: str = "PNG",
    mode: str = "RGB",
) -> bytes:
    im = Image.new("RGB", size, (128, 128, 128))
    d = ImageDraw.Draw(im)
    box = (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4)
    (d.ellipse if shape == "circle" else d.rectangle)(box, fill=color)
    buf = io.BytesIO()
    im.convert(mode).save(buf, format=fmt)
    return buf.getvalue()


def shape_items() -> list[tuple[bytes, str, dict[str, Any]]]:
    """8 images: 4 colours x 2 shapes, captioned, with metadata."""
    return [
        (png_bytes(rgb, shape=shape), f"a {name} {shape}", {"color": name, "shape": shape, "split": "test"})
        for name, rgb in COLORS.items()
        for shape in SHAPES
    ]


class FakeNotFound(LookupError):
    pass


class FakeIndex:
    def __init__(self, bundle: Any, items: list[tuple[bytes, str | None, dict[str, Any]]]) -> None:
        self.dim = bundle.embed_dim
        self.fingerprint = bundle.fingerprint
        self._rows: dict[int, dict[str, Any]] = {}
        self._next = 0
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.add(bundle, items)

    def __len__(self) -> int:
        return len(self._rows)

    def info(self) -> dict[str, Any]:
        return {"dim": self.dim, "fingerprint": self.fingerprint, "factory": "Flat", "metric": "ip"}

    def add(self, bundle: Any, items: list[tuple[bytes, str | None, dict[str, Any]]]) -> list[int]:
        ids = []
        for data, caption, meta in items:
            im = bundle.load_image(data)
            image_vec = bundle.encode_images(bundle.preprocess([im]))[0].numpy()
            text_vec = bundle.encode_texts([caption])[0].numpy() if caption else None
            self._rows[self._next] = {
                "bytes": data,
                "caption": caption,
                "meta": dict(meta),
                "size": im.size,
                "images": image_vec,
                "captions": text_vec,
            }
            ids.append(self._next)
            self._next += 1
        return ids

    def add_vectors(
        self,
        items: list[tuple[bytes, str | None, dict[str, Any]]],
        image_features: np.ndarray,
        caption_features: np.ndarray,
        *,
        fingerprint: str | None = None,
    ) -> list[int]:
        assert fingerprint in (None, self.fingerprint)
        texts = iter(caption_features)
        ids = []
        for (data, caption, meta), image_vec in zip(items, image_features, strict=True):
            with Image.open(io.BytesIO(data)) as im:
                size = im.size
            self._rows[self._next] = {
                "bytes": data,
                "caption": caption,
                "meta": dict(meta),
                "size": size,
                "images": image_vec,
                "captions": next(texts) if caption else None,
            }
            ids.append(self._next)
            self._next += 1
        return ids

    def remove(self, ids: list[int]) -> int:
        return sum(self._rows.pop(i, None) is not None for i in ids)

    def get(self, id: int) -> Item:
        if id not in self._rows:
            raise FakeNotFound(id)
        r = self._rows[id]
        return Item(id, f"k{id}", r["caption"], "/secret/source.tar", None, None, *r["size"], extra=r["meta"])

    def read_image_bytes(self, id: int) -> tuple[bytes, str]:
        if id not in self._rows:
            raise FakeNotFound(id)
        return self._rows[id]["bytes"], "image/png"

    def search_vectors(
        self,
        vectors: np.ndarray,
        k: int = 10,
        *,
        target: str = "images",
        filters: dict | None = None,
        threshold: float | None = None,
        offset: int = 0,
        collapse: Any = None,
    ) -> list[list[Hit]]:
        self.calls.append(
            (
                "search_vectors",
                {
                    "k": k,
                    "target": target,
                    "filters": filters,
                    "threshold": threshold,
                    "offset": offset,
                    "shape": vectors.shape,
                },
            )
        )
        assert vectors.dtype == np.float32 and vectors.ndim == 2 and vectors.shape[1] == self.dim
        out = []
        for q in vectors:
            hits = []
            for i, r in self._rows.items():
                if r[target] is None or any(r["meta"].get(key) != v for key, v in (filters or {}).items()):
                    continue
                score = float(q @ r[target])
                if threshold is None or score >= threshold:
                    hits.append(Hit(i, score, r["caption"], r["meta"]))
            hits.sort(key=lambda h: -h.score)
            out.append(hits[offset : offset + k])
        return out

    def search_id(self, id: int, k: int = 10, **kw: Any) -> list[Hit]:
        if id not in self._rows:
            raise FakeNotFound(id)
        return self.search_vectors(self._rows[id]["images"][None, :].astype(np.float32), k, **kw)[0]

    def image_vectors(self, ids: list[int]) -> np.ndarray:
        missing = [i for i in ids if i not in self._rows]
        if missing:
            raise FakeNotFound(missing[0])
        return np.stack([self._rows[i]["images"] for i in ids]).astype(np.float32)

    def search_text(self, bundle: Any, text: str, k: int = 10, **kw: Any) -> list[Hit]:
        return self.search_vectors(bundle.encode_texts([text]).numpy(), k, **kw)[0]


def encode_reference(bundle: Any, data: bytes) -> np.ndarray:
    with torch.inference_mode():
        return bundle.encode_images(bundle.preprocess([bundle.load_image(data)]))[0].numpy()
