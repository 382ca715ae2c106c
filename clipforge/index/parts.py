"""Embedded vectors on disk in chunks: the hand-off between the embedding step and the index build.

A parts directory holds `images-00000.{ids,vecs}.npy`, `captions-…` and `meta.sqlite` (ids local to the
directory, from 0) plus `parts.json` (counts, skip reasons, bundle fingerprint). Several of them, made by
separate processes over disjoint shard ranges, merge into one index (ids re-based in order).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from clipforge.index.types import IndexInputError

CHUNK_ROWS = 65_536


class PartWriter:
    """Buffers (ids, vectors) and writes a chunk file pair every CHUNK_ROWS rows."""

    def __init__(self, root: Path, name: str, chunk_rows: int = CHUNK_ROWS) -> None:
        self.root, self.name, self.chunk_rows = root, name, chunk_rows
        self.ids: list[np.ndarray] = []
        self.vecs: list[np.ndarray] = []
        self.buffered = 0
        self.chunk = 0

    def append(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        if len(ids):
            self.ids.append(np.asarray(ids, np.int64))
            self.vecs.append(np.asarray(vecs, np.float32))
            self.buffered += len(ids)
        if self.buffered >= self.chunk_rows:
            self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        stem = self.root / f"{self.name}-{self.chunk:05d}"
        np.save(f"{stem}.ids.npy", np.concatenate(self.ids))
        np.save(f"{stem}.vecs.npy", np.concatenate(self.vecs))
        self.ids, self.vecs, self.buffered, self.chunk = [], [], 0, self.chunk + 1


class Parts:
    """Read side: chunks of (ids, vectors) across one or more parts directories, ids re-based."""

    def __init__(self, dirs: list[Path], name: str, offsets: list[int]) -> None:
        self.files = [(d, p, off) for d, off in zip(dirs, offsets, strict=True)
                      for p in sorted(d.glob(f"{name}-*.ids.npy"))]  # fmt: skip
        self.sizes = [int(np.load(p, mmap_mode="r").shape[0]) for _, p, _ in self.files]

    def __len__(self) -> int:
        return sum(self.sizes)

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids [n], vectors [n, D]); vectors are memory-mapped, so only one chunk is resident."""
        for _, p, off in self.files:
            ids = np.load(p) + off
            yield ids, np.load(str(p).replace(".ids.npy", ".vecs.npy"), mmap_mode="r")

    def gather(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows at global positions (sorted): a training sample or recall queries without loading all."""
        positions = np.sort(np.asarray(positions, np.int64))
        ids, vecs, start = [], [], 0
        for (_, p, off), size in zip(self.files, self.sizes, strict=True):
            local = positions[(positions >= start) & (positions < start + size)] - start
            if len(local):
                ids.append(np.load(p)[local] + off)
                vecs.append(np.asarray(np.load(str(p).replace(".ids.npy", ".vecs.npy"), mmap_mode="r")[local]))
            start += size
        if not ids:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        return np.concatenate(ids), np.concatenate(vecs).astype(np.float32)


def read_parts_info(d: Path) -> dict[str, Any]:
    path = d / "parts.json"
    if not path.is_file():
        raise IndexInputError(f"{d} is not a finished embedding directory (no parts.json)")
    return json.loads(path.read_text())
