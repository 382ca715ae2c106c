"""Exact re-ranking from float16 copies of the vectors kept on disk.

A compressed IVF index (PQ codes, ~100 B/vector in RAM) proposes `k * k_factor` candidates; their float16
copies, in .npy segment files memory-mapped from the version directory (2 B per dimension on disk, paged in
only for the candidates a query touches), give exact inner products to re-rank them. RAM holds the codes;
the disk holds the precision. On the benchmark's clustered vectors 8-bit PQ at ~100 B/vector alone tops
out near recall@10 0.85 (benchmarks/index_limits.py), while re-ranking a few dozen candidates reaches 0.95+.

Segments: `images.vectors-0000.npy` holds rows for ids [first_id, first_id + rows) (row = id - first_id;
a caption segment has zero rows for items without a caption). The build writes one; each add appends one;
removes leave rows behind (the FAISS index no longer returns those ids). Versions are immutable, so a new
version hard-links the segments it keeps from the previous one instead of copying them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from clipforge.index import faiss_index, tuning
from clipforge.index.types import IndexInputError, IndexUnreadableError

DTYPE = np.float16
FACTORS = (1, 2, 4, 8, 16)  # candidates per result the tuner tries, cheapest first
MAX_EXTRA = 20_000  # at most this many candidates beyond the ones asked for (large k)
MAX_SEGMENTS = 8  # more than this after an add: the added segments are merged into one


def segment_name(name: str, n: int) -> str:
    return f"{name}.vectors-{n:04d}.npy"


class Vectors:
    """Read side: float16 rows by id over a version's segments (memory-mapped, read-only)."""

    def __init__(self, starts: list[int], arrays: list[np.ndarray]) -> None:
        order = np.argsort(starts, kind="stable")
        self.starts = np.asarray(starts, np.int64)[order]
        self.arrays = [arrays[i] for i in order]
        self.ends = self.starts + np.array([len(a) for a in self.arrays], np.int64)
        self.dim = int(self.arrays[0].shape[1]) if self.arrays else 0

    @classmethod
    def open(cls, vdir: Path, section: dict[str, Any], dim: int) -> Vectors | None:
        refine = section.get("refine")
        if not refine:
            return None
        starts, arrays = [], []
        for seg in refine["segments"]:
            path = vdir / seg["file"]
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exn:
                raise IndexUnreadableError(f"{path} cannot be read ({exn}): truncated or corrupt") from exn
            if arr.dtype != DTYPE or arr.ndim != 2 or arr.shape != (int(seg["rows"]), dim):
                raise IndexUnreadableError(
                    f"{path} holds {arr.dtype} {list(arr.shape)}, the manifest says float16 [{seg['rows']}, {dim}]"
                )
            starts.append(int(seg["first_id"]))
            arrays.append(arr)
        return cls(starts, arrays)

    def get(self, ids: Any) -> np.ndarray:
        """[n, D] float32 rows for `ids`; ids outside every segment (or negative) give zero rows."""
        ids = np.asarray(ids, np.int64).ravel()
        out = np.zeros((len(ids), self.dim), np.float32)
        if not len(ids) or not self.arrays:
            return out
        seg = np.searchsorted(self.starts, ids, side="right") - 1
        ok = (seg >= 0) & (ids < self.ends[np.maximum(seg, 0)])
        for s in np.unique(seg[ok]):
            mask = ok & (seg == s)
            out[mask] = self.arrays[s][ids[mask] - self.starts[s]]
        return out

    def rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top `k` of each query's candidate ids [Q, C] by exact inner product: (scores, ids) [Q, k]."""
        q, c = candidates.shape
        vecs = self.get(candidates).reshape(q, c, self.dim)
        scores = np.einsum("qcd,qd->qc", vecs, queries)
        scores[candidates < 0] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        s, i = np.take_along_axis(scores, top, 1), np.take_along_axis(candidates, top, 1)
        i[~np.isfinite(s)] = -1
        return s, i


def search(
    index: faiss.Index, vectors: Vectors, queries: np.ndarray, k: int, factor: int, params: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """`k * factor` candidates from the compressed index, re-ranked exactly: (scores, ids) [Q, k]."""
    fetch = int(min(k * max(factor, 1), k + MAX_EXTRA, max(index.ntotal, k)))
    candidates = index.search(queries, fetch, params=params)[1]
    return vectors.rerank(queries, candidates, k)


def tune(
    index: faiss.Index,
    vectors: Vectors,
    queries: np.ndarray,
    truth: np.ndarray,
    target: float = tuning.RECALL_TARGET,
    k: int = 10,
) -> tuple[dict[str, int], int, float]:
    """The cheapest (nprobe, k_factor) whose re-ranked recall@k reaches `target`: (params, factor, recall).
    For each nprobe from 1 up (doubling), factors 1..16: a deeper re-rank reads k × factor more float16
    rows, while each doubling of nprobe doubles the codes scanned, so depth is tried before probes."""
    ivf = faiss_index.ivf_of(index)
    if ivf is None or len(queries) == 0:
        return {}, 1, tuning.recall_at_k(index.search(queries, k)[1], truth) if len(queries) else 1.0
    hnsw = isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW)
    best: tuple[dict[str, int], int, float] = ({}, 1, -1.0)
    for params in tuning.candidates(ivf.nlist, hnsw):
        tuning.apply_search_params(index, params)
        recall = -1.0
        for factor in FACTORS:
            recall = tuning.recall_at_k(search(index, vectors, queries, k, factor)[1], truth)
            if recall >= target:
                return params, factor, recall
        if recall < best[2] + 0.003:  # plateau at the deepest re-rank: more probes do not help
            break
        best = (params, FACTORS[-1], recall)
    tuning.apply_search_params(index, best[0])
    return best


def write_segment(
    path: Path, first_id: int, rows: int, dim: int, chunks: Iterable[tuple[np.ndarray, np.ndarray]]
) -> dict[str, Any]:
    """A float16 segment for ids [first_id, first_id + rows) from (ids, vectors) chunks; rows with no
    vector stay zero. Returns its manifest entry."""
    if path.exists():  # it may be a hard link shared with a live version: never write through it
        raise IndexInputError(f"{path} already exists")
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=DTYPE, shape=(rows, dim))
    for ids, vecs in chunks:
        if len(ids):
            arr[np.asarray(ids, np.int64) - first_id] = np.asarray(vecs, np.float32)
    arr.flush()
    del arr
    return {"file": path.name, "first_id": int(first_id), "rows": int(rows)}


def carry(src: Path, dst: Path, refine: dict[str, Any]) -> None:
    """Hard-link (copy where links fail) a version's segment files into the next version's directory."""
    for seg in refine["segments"]:
        try:
            os.link(src / seg["file"], dst / seg["file"])
        except OSError:
            shutil.copyfile(src / seg["file"], dst / seg["file"])


def append(
    vdir: Path, name: str, refine: dict[str, Any], first_id: int, rows: int, dim: int, ids: np.ndarray, vecs: np.ndarray
) -> dict[str, Any]:
    """The refine section after adding rows [first_id, first_id + rows) in a new segment of `vdir` (which
    already holds the carried ones). Past MAX_SEGMENTS, every segment but the first (the build's) is merged
    into one, so lookups stay a handful of files however many small adds come through the service."""
    segments = list(refine["segments"])
    used = {s["file"] for s in segments}
    n = len(segments)
    while segment_name(name, n) in used:
        n += 1
    segments.append(write_segment(vdir / segment_name(name, n), first_id, rows, dim, [(ids, vecs)]))
    if len(segments) > MAX_SEGMENTS:
        tail = segments[1:]
        old = Vectors([s["first_id"] for s in tail], [np.load(vdir / s["file"], mmap_mode="r") for s in tail])
        lo, hi = int(old.starts.min()), int(old.ends.max())
        n += 1
        while segment_name(name, n) in used:
            n += 1
        merged_name = segment_name(name, n)
        span = np.arange(lo, hi, dtype=np.int64)
        step = 65_536
        merged = write_segment(
            vdir / merged_name,
            lo,
            hi - lo,
            dim,
            ((span[i : i + step], old.get(span[i : i + step])) for i in range(0, len(span), step)),
        )
        del old
        for s in tail:
            (vdir / s["file"]).unlink()
        segments = [segments[0], merged]
    return {**refine, "segments": segments}
