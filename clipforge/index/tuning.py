"""Search knobs (nprobe, efSearch), recall against exact search, and tuning the knobs to a recall target."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import faiss
import numpy as np

from clipforge.index.faiss_index import ivf_of

RECALL_TARGET = 0.95


def apply_search_params(index: faiss.Index, params: dict[str, Any]) -> None:
    """Set nprobe / quantizer_efSearch / efSearch (as recorded in the manifest) on a loaded index."""
    if params:
        target = index.index if isinstance(index, faiss.IndexIDMap2) else index
        faiss.ParameterSpace().set_index_parameters(
            faiss.downcast_index(target), ",".join(f"{k}={v}" for k, v in params.items())
        )


def search_params(index: faiss.Index, selector: Any) -> Any:
    """SearchParameters carrying an id selector plus the index's own knobs (params override the index's)."""
    ivf = ivf_of(index)
    if ivf is not None:
        p = faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe)
        quantizer = faiss.downcast_index(ivf.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):
            p.quantizer_params = faiss.SearchParametersHNSW(efSearch=quantizer.hnsw.efSearch)
        return p
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(inner, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=inner.hnsw.efSearch)
    return faiss.SearchParameters(sel=selector)


class ExactTopK:
    """Running exact top-k of a few queries over vectors that arrive in chunks (ground truth for recall)."""

    def __init__(self, queries: np.ndarray, k: int = 10) -> None:
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.k = k
        self.scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        self.ids = np.full((len(queries), k), -1, dtype=np.int64)

    def update(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0 or len(self.queries) == 0:
            return
        s = self.queries @ np.asarray(vectors, dtype=np.float32).T  # [Q, n]
        all_s = np.concatenate([self.scores, s], axis=1)
        all_i = np.concatenate([self.ids, np.broadcast_to(np.asarray(ids, dtype=np.int64), s.shape)], axis=1)
        top = np.argpartition(-all_s, self.k - 1, axis=1)[:, : self.k] if all_s.shape[1] > self.k else None
        if top is not None:
            all_s, all_i = np.take_along_axis(all_s, top, 1), np.take_along_axis(all_i, top, 1)
        self.scores, self.ids = all_s, all_i


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean |found ∩ truth| / |truth| per query (10-recall@10 when both are top-10 lists)."""
    hits = [
        len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) / max(int((t >= 0).sum()), 1)
        for f, t in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits)) if hits else 1.0


def candidates(nlist: int, hnsw: bool) -> Iterator[dict[str, int]]:
    nprobe = 1
    while nprobe <= nlist:
        yield {"nprobe": nprobe, "quantizer_efSearch": max(2 * nprobe, 32)} if hnsw else {"nprobe": nprobe}
        nprobe *= 2


def tune(
    index: faiss.Index, queries: np.ndarray, truth: np.ndarray, target: float = RECALL_TARGET, k: int = 10
) -> tuple[dict[str, int], float]:
    """The cheapest nprobe (and quantizer efSearch) whose recall@k reaches `target`; (params, recall)."""
    ivf = ivf_of(index)
    if ivf is None or len(queries) == 0:
        inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
        params = {"efSearch": max(64, 2 * k)} if isinstance(inner, faiss.IndexHNSW) else {}
        apply_search_params(index, params)
        found = index.search(queries, k)[1] if len(queries) else truth
        return params, recall_at_k(found, truth)
    hnsw = isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW)
    best: tuple[dict[str, int], float] = ({}, -1.0)
    for params in candidates(ivf.nlist, hnsw):
        apply_search_params(index, params)
        recall = recall_at_k(index.search(queries, k)[1], truth)
        if recall < best[1] + 0.003:  # plateau: the codes, not the probing, limit recall; stay cheaper
            break
        best = (params, recall)
        if recall >= target:
            break
    apply_search_params(index, best[0])
    return best
