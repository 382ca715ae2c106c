"""Embedded vectors on disk in chunks: the hand-off between the embedding step and the index build.

A parts directory holds `images-00000.{ids,vecs}.npy`, `captions-…` and `meta.sqlite` (ids local to the
directory, from 0) plus `parts.json` (counts, skip reasons, bundle fingerprint). Several of them, made by
separate processes over disjoint shard ranges, merge into one index (ids re-based in order).
"""

from __future__ import annotations

import json
import sqlite3
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
        self.files = [
            (d, p, off) for d, off in zip(dirs, offsets, strict=True) for p in sorted(d.glob(f"{name}-*.ids.npy"))
        ]
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


INFO_SHAPE: dict[str, type | tuple[type, ...]] = {
    "data": str,
    "fingerprint": str,
    "dim": int,
    "items": int,
    "captions": int,
    "skipped": dict,
    "embed_seconds": (int, float),
}


def read_parts_info(d: Path) -> dict[str, Any]:
    """A parts directory's parts.json, its shape checked: a one-line error for anything else."""
    path = d / "parts.json"
    if not path.is_file():
        raise IndexInputError(f"{d} is not a finished embedding directory (no parts.json)")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exn:
        raise IndexInputError(f"{path} is not valid JSON ({exn}): corrupt") from exn
    if not isinstance(info, dict):
        raise IndexInputError(f"{path} should hold a JSON object, not {type(info).__name__}: corrupt")
    for key, kind in INFO_SHAPE.items():
        if key not in info:
            raise IndexInputError(f"{path}: {key!r} is missing: corrupt or not written by clipforge")
        if not isinstance(info[key], kind) or isinstance(info[key], bool):
            raise IndexInputError(
                f"{path}: {key!r} should be {getattr(kind, '__name__', 'a number')}, "
                f"not {type(info[key]).__name__}: corrupt"
            )
    if info["dim"] <= 0 or info["items"] < 0 or not 0 <= info["captions"] <= info["items"]:
        raise IndexInputError(
            f"{path}: dim {info['dim']}, {info['items']} items and {info['captions']} captions do not add up: corrupt"
        )
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in info["skipped"].values()):
        raise IndexInputError(f"{path}: 'skipped' should count images by reason: corrupt")
    return info


def check_files(d: Path, info: dict[str, Any]) -> None:
    """The chunk files and meta.sqlite hold what parts.json says: ids in order, from 0 (images: every one
    of [0, items)), vectors [rows, dim] float32 beside each ids file, one metadata row per item."""
    for name, count in (("images", info["items"]), ("captions", info["captions"])):
        rows, last = 0, -1
        for ids_path in sorted(d.glob(f"{name}-*.ids.npy")):
            vecs_path = Path(str(ids_path).replace(".ids.npy", ".vecs.npy"))
            if not vecs_path.is_file():
                raise IndexInputError(f"{vecs_path} is missing: the parts directory is incomplete")
            try:
                ids, vecs = np.load(ids_path, mmap_mode="r"), np.load(vecs_path, mmap_mode="r")
            except (OSError, ValueError) as exn:
                raise IndexInputError(
                    f"{ids_path.parent / ids_path.name.split('.')[0]} cannot be read ({exn}): truncated or corrupt"
                ) from exn
            if (
                ids.dtype != np.int64
                or ids.ndim != 1
                or vecs.dtype != np.float32
                or vecs.shape != (len(ids), info["dim"])
            ):
                raise IndexInputError(
                    f"{ids_path}: ids {ids.dtype} {list(ids.shape)} and vectors {vecs.dtype} "
                    f"{list(vecs.shape)} do not match [n] int64 and [n, {info['dim']}] float32"
                )
            if len(ids) and (
                ids[0] <= last or (len(ids) > 1 and np.any(np.diff(ids) <= 0)) or ids[-1] >= info["items"]
            ):
                raise IndexInputError(f"{ids_path}: ids are out of order or outside [0, {info['items']}): corrupt")
            rows, last = rows + len(ids), int(ids[-1]) if len(ids) else last
        if rows != count:
            raise IndexInputError(
                f"{d}: parts.json records {count} {name}, its chunk files hold {rows}: "
                "a chunk file is missing or the directory is incomplete"
            )
    meta = d / "meta.sqlite"
    if not meta.is_file():
        raise IndexInputError(f"{meta} is missing: the parts directory is incomplete")
    try:
        conn = sqlite3.connect(f"file:{meta.resolve()}?mode=ro", uri=True)
        try:
            n, low, high = conn.execute("SELECT COUNT(*), MIN(id), MAX(id) FROM items").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exn:
        raise IndexInputError(f"{meta} is not a readable metadata table ({exn}): truncated or corrupt") from exn
    if n != info["items"] or (n and (low != 0 or high != n - 1)):
        raise IndexInputError(f"{meta} holds {n} items (ids {low}..{high}), parts.json records {info['items']}")


def _sources(data: str) -> set[str]:
    """What a parts directory embedded: its folder, or each shard of its spec (local ones resolved)."""
    from clipforge.data.shards import expand_urls

    if Path(data).is_dir():
        return {str(Path(data).resolve())}
    try:
        urls = expand_urls(data)
    except ValueError:
        return {data}
    return {u if "://" in u or u.startswith("pipe:") else str(Path(u).resolve()) for u in urls}


def check_parts(dirs: Any) -> list[dict[str, Any]]:
    """The parts.json of each directory, after checking that they can be merged: at least one, none given
    twice or embedding the same data as another, files complete, one bundle."""
    if isinstance(dirs, str | Path) or not isinstance(dirs, list | tuple):
        raise IndexInputError("give the parts directories as a list")
    if not dirs:
        raise IndexInputError("no parts directories given")
    paths = [Path(d) for d in dirs]
    seen: dict[Path, Path] = {}
    for p in paths:
        if not p.is_dir():
            raise IndexInputError(f"{p} is not a directory")
        if p.resolve() in seen:
            raise IndexInputError(f"{p} is given twice: its items would be indexed twice")
        seen[p.resolve()] = p
    infos = [read_parts_info(p) for p in paths]
    for p, info in zip(paths, infos, strict=True):
        check_files(p, info)
    if len({i["fingerprint"] for i in infos}) > 1 or len({i["dim"] for i in infos}) > 1:
        raise IndexInputError("the parts directories were embedded with different bundles")
    owner: dict[str, Path] = {}
    for p, info in zip(paths, infos, strict=True):
        for source in sorted(_sources(info["data"])):
            if source in owner:
                raise IndexInputError(
                    f"{owner[source]} and {p} both embedded {source}: its items would be indexed twice"
                )
            owner[source] = p
    return infos
