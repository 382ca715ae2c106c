"""Query side: validate queries, run FAISS with optional id selectors, then threshold, collapse, page."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from clipforge.index import faiss_index, tuning
from clipforge.index import refine as rx
from clipforge.index.state import State
from clipforge.index.types import Hit, IndexInputError

MAX_K = 1000  # results per page
MAX_DEPTH = 10_000  # offset + k: deeper pages are refused, not silently truncated
TARGETS = ("images", "captions")
SCORE_RANGE = (-1.0, 1.0)  # scores are cosine similarities: a threshold outside keeps everything or nothing


def check_query(vectors: Any, dim: int) -> np.ndarray:
    """[N, D] float32, L2-normalised; a clear error for anything else."""
    try:
        q = np.asarray(vectors, dtype=np.float64)  # normalised in float64: tiny values keep a non-zero norm
    except (TypeError, ValueError) as exn:
        raise IndexInputError(f"query vectors must be numeric: {exn}") from exn
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[0] == 0:
        raise IndexInputError(f"query vectors must have shape [N, {dim}], got {list(q.shape)}")
    if q.shape[1] != dim:
        raise IndexInputError(f"query vectors have dimension {q.shape[1]}, the index has {dim}")
    if not np.isfinite(q).all():
        raise IndexInputError("query vectors contain NaN or infinity")
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    if (norms == 0).any():
        raise IndexInputError("a query vector is all zeros")
    if not np.isfinite(norms).all():
        raise IndexInputError("a query vector is too large to normalise")
    return np.ascontiguousarray(q / norms, dtype=np.float32)


def check_paging(k: Any, offset: Any, threshold: Any, collapse: Any, target: str) -> None:
    """The index's rule for a search's paging and filtering arguments (the CLI checks its flags with it)."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k <= 0:
        raise IndexInputError(f"k must be a positive integer, got {k!r}")
    if k > MAX_K:
        raise IndexInputError(f"k={k} is over the limit of {MAX_K}; page with offset instead")
    if isinstance(offset, bool) or not isinstance(offset, int | np.integer) or offset < 0:
        raise IndexInputError(f"offset must be a non-negative integer, got {offset!r}")
    if offset + k > MAX_DEPTH:
        raise IndexInputError(f"offset + k = {offset + k} is over the limit of {MAX_DEPTH}")
    low, high = SCORE_RANGE
    if threshold is not None and not (np.isfinite(threshold) and low <= threshold <= high):
        raise IndexInputError(f"threshold must be a similarity in [{low:g}, {high:g}], got {threshold!r}")
    if collapse is not None and not (0 < collapse <= 1):
        raise IndexInputError(f"collapse must be a similarity in (0, 1], got {collapse!r}")
    if target not in TARGETS:
        raise IndexInputError(f"target must be one of {TARGETS}, got {target!r}")


def stored_vectors(state: State, ids: list[int]) -> np.ndarray:
    """Image vectors by id: the float16 re-rank copies where the index keeps them (exact, no id map to
    build), else decoded from the FAISS codes. Unknown ids raise RuntimeError on the FAISS path."""
    vectors = state.vectors.get("images")
    if vectors is not None:
        return vectors.get(ids)
    return faiss_index.reconstruct(state.images, ids)


def _collapse(ids: list[int], state: State, sim: float) -> list[int]:
    """Greedy near-duplicate removal in rank order: drop a hit whose image is >= `sim` to a kept one."""
    vecs = stored_vectors(state, ids)
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    kept: list[int] = []
    for j in range(len(ids)):
        if not kept or float(np.max(vecs[kept] @ vecs[j])) < sim:
            kept.append(j)
    return [ids[j] for j in kept]


def search(
    state: State,
    queries: np.ndarray,
    k: int,
    *,
    target: str,
    filters: dict | None,
    threshold: float | None,
    offset: int,
    collapse: float | None,
    exclude: set[int] | None = None,
) -> list[list[Hit]]:
    index = state.images if target == "images" else state.captions
    tombstones = int(state.manifest[target].get("tombstones", 0))
    want = offset + k + len(exclude or ())
    params = None
    if filters:
        if not isinstance(filters, dict):
            raise IndexInputError(f"filters must be a mapping of field -> value, got {type(filters).__name__}")
        allowed = np.array(state.meta.filter_ids(filters), np.int64)
        if len(allowed) == 0:
            return [[] for _ in range(len(queries))]
        params = tuning.search_params(index, faiss.IDSelectorBatch(allowed))
    ntotal = int(index.ntotal)
    if ntotal == 0:
        return [[] for _ in range(len(queries))]
    fetch = min(want + tombstones, ntotal)
    vectors = state.vectors.get(target)
    factor = int(state.manifest[target].get("refine", {}).get("k_factor", 1))
    while True:
        if vectors is not None:  # compressed codes propose, float16 copies on disk re-rank exactly
            scores, ids = rx.search(index, vectors, queries, fetch, factor, params)
        else:
            scores, ids = index.search(queries, fetch, params=params)  # [Q, fetch] each
        out, short = [], False
        for row_s, row_i in zip(scores, ids, strict=True):
            ranked = _rank(state, row_s, row_i, threshold, collapse, exclude)
            short |= len(ranked) < offset + k and not _exhausted(row_s, row_i, threshold)
            out.append(ranked)
        if not short or fetch >= ntotal or fetch >= 4 * MAX_DEPTH:
            break
        fetch = min(fetch * 4, ntotal)  # collapse or tombstones ate results: look deeper
    items = state.meta.get_many(sorted({i for row in out for i, _ in row}))
    return [
        [Hit(i, s, items[i].caption, items[i].metadata()) for i, s in row[offset : offset + k] if i in items]
        for row in out
    ]


def _exhausted(scores: np.ndarray, ids: np.ndarray, threshold: float | None) -> bool:
    """True when looking deeper cannot help: FAISS ran out of candidates or they fell under the threshold."""
    return bool((ids < 0).any() or (threshold is not None and len(scores) and scores[-1] < threshold))


def _rank(
    state: State,
    scores: np.ndarray,
    ids: np.ndarray,
    threshold: float | None,
    collapse: float | None,
    exclude: set[int] | None,
) -> list[tuple[int, float]]:
    pairs = [(int(i), float(s)) for i, s in zip(ids, scores, strict=True) if i >= 0]
    if threshold is not None:
        pairs = [(i, s) for i, s in pairs if s >= threshold]
    if exclude:
        pairs = [(i, s) for i, s in pairs if i not in exclude]
    if state.manifest["images"].get("tombstones", 0) or state.manifest["captions"].get("tombstones", 0):
        live = state.meta.existing([i for i, _ in pairs])
        pairs = [(i, s) for i, s in pairs if i in live]
    if collapse is not None and pairs:
        keep = set(_collapse([i for i, _ in pairs], state, collapse))
        pairs = [(i, s) for i, s in pairs if i in keep]
    return pairs
