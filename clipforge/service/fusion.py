"""Fusion heads served beside the bundle (clipforge.fusion): loading them, and their two kinds of input.

A head answers a question about an (image, text) pair from the bundle's L2-normalised image and text
embeddings, so serving one costs two encodes (through the engine's micro-batcher, like every other route)
plus a small matrix product. Used by `serve`'s preflight, the app's lifespan and routers/heads.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from clipforge.fusion.head import HEAD_NAME, Head, load_head
from clipforge.service.engine import Engine
from clipforge.service.errors import APIError
from clipforge.service.store import IndexHandle, index_errors


def named_path(entry: str | Path) -> tuple[str | None, Path]:
    """`--head` takes DIR or NAME=DIR: (NAME or None, DIR). A path that exists as given is a path, even with
    an "=" in it."""
    text = str(entry)
    name, sep, rest = text.partition("=")
    if sep and HEAD_NAME.fullmatch(name) and not Path(text).exists():
        if not rest.strip():
            raise ValueError(f"head {text!r}: NAME=DIR names no folder")
        return name, Path(rest).expanduser()  # the shell leaves "~" after "=" alone
    return None, Path(text)


def load_heads(paths: Iterable[str | Path], fingerprint: str) -> dict[str, Head]:
    """name -> head, for heads trained on the bundle with this fingerprint; each entry a head folder, a
    `fuse train` run folder, or NAME=folder to serve it under another name. Raises ValueError (HeadError is
    one) with one line for a missing or corrupt head, one of another bundle, or two heads of one name."""
    heads: dict[str, Head] = {}
    for entry in paths:
        name, path = named_path(entry)
        head = load_head(path, fingerprint=fingerprint)
        head.name = name or head.name
        if not HEAD_NAME.fullmatch(head.name):
            raise ValueError(f"head {path}: its name {head.name!r} cannot be served (use 1-64 letters, digits, _ . -)")
        if head.name in heads:
            raise ValueError(f"head {path}: another served head is also named {head.name!r}; names must be unique")
        heads[head.name] = head
    return heads


async def text_features(engine: Engine, texts: list[str]) -> tuple[np.ndarray, int]:
    """[N, D] text embeddings through the engine's embedding cache (questions repeat: the same few texts
    are asked of many images), and how many came from it. A text's entry is its one-label, one-template
    ("{}") class embedding, which is the text's own normalised embedding: /v1/classify shares it."""
    unique = list(dict.fromkeys(texts))
    # concurrent misses reach the micro-batcher together, so they are encoded as one batch
    got = await asyncio.gather(*(engine.class_embeddings([t], ["{}"]) for t in unique))
    row = {t: features[0] for t, (features, _) in zip(unique, got, strict=True)}  # [D] each
    return np.stack([row[t] for t in texts]), sum(cached for _, cached in got)


async def stored_image_features(index: IndexHandle, ids: list[int]) -> np.ndarray:
    """[N, D] the indexed items' stored image vectors (no image is decoded or encoded), renormalised: the
    index may keep compressed copies, only near unit length, and a head was trained on unit vectors."""
    try:
        vectors = await index.run(lambda idx: idx.image_vectors(ids))  # [N, D]
    except index_errors() as exn:
        raise APIError(404, "not_found", f"ids: {exn}") from exn
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
