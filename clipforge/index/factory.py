"""Which FAISS index, how to train and fill it, and how to tune its search knobs to a recall target.

The choice follows autofaiss: exact `Flat` while the vectors are few (or fit the memory budget and are
under FLAT_MAX), otherwise an inverted file whose coarse quantizer is HNSW once there are many lists, with
PQ codes sized to the memory budget (SQ8 when the budget affords a byte per dimension). Every index uses
inner product on L2-normalised vectors, i.e. cosine similarity.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import faiss
import numpy as np

from clipforge.index.types import IndexError_

FLAT_MAX = 50_000  # below this many vectors exact search is fast enough and needs no training
DEFAULT_PQ_BYTES = 64  # code bytes per vector when no budget is given (72 B/vector with its id, + centroids)
# Per vector beside its code: the int64 id in its inverted list. The id -> (list, offset) map that
# reconstruct(id) needs is not stored (16 B/vector in the file, more as a hashtable in RAM): `reconstruct`
# builds it on first use, and remove_ids scans the lists without it.
ID_OVERHEAD = 8
HNSW32_LINKS = 288  # bytes per centroid of an HNSW32 coarse quantizer beside the centroid: links, levels
HNSW_FROM = 4096  # lists from which the coarse quantizer is HNSW; below, exact search over the centroids is cheap
RECALL_TARGET = 0.95


def _nlist_for(n: int) -> int:
    # ~4 sqrt(n) (autofaiss: 4-16 sqrt(n)). Many lists pay twice for PQ codes: they encode the residual to
    # the centroid, which shrinks as lists get finer, and each probe scans fewer codes. On the clustered
    # benchmark vectors IVF1024 instead of IVF512 (100k) lifts recall@10 from ~0.70 to ~0.81 at equal bytes.
    nlist = 2 ** round(math.log2(max(4 * math.sqrt(n), 1)))
    return int(max(16, min(nlist, 65536, 2 ** int(math.log2(max(n // 39, 16))))))  # >= 39 training points per list


def _codes(dim: int, cap: float) -> Iterator[tuple[str, int, int]]:
    """(factory suffix, code bytes, codebook bytes) from the largest code to the smallest, code <= cap."""
    options = [("SQ8", dim, 2 * dim * 4)]
    for m in (64, 48, 32, 24, 16, 12, 8, 4, 2, 1):
        if dim % m == 0 and (m <= dim // 2 or dim < 2):  # at least 2 dimensions per sub-quantizer
            for nbits in (8, 7, 6):  # fewer bits: a smaller code and a 4-16x smaller codebook
                suffix = f"PQ{m}" if nbits == 8 else f"PQ{m}x{nbits}"
                options.append((suffix, math.ceil(m * nbits / 8), 2**nbits * dim * 4))
    options.sort(key=lambda o: -o[1])  # stable: at equal code bytes, more bits per sub-quantizer first
    yield from (o for o in options if o[1] <= cap)


def _quantizer(nlist: int, dim: int) -> tuple[str, int]:
    """(factory prefix, bytes) of the coarse quantizer: HNSW32 over the centroids from HNSW_FROM lists."""
    if nlist >= HNSW_FROM:
        return f"IVF{nlist}_HNSW32", nlist * (dim * 4 + HNSW32_LINKS)
    return f"IVF{nlist}", nlist * dim * 4


def _largest_code(n: int, dim: int, nlist: int, budget: float) -> tuple[str, int] | None:
    """(factory suffix, code bytes) of the largest code that fits the budget beside `nlist` lists."""
    quantizer_bytes = _quantizer(nlist, dim)[1]
    for suffix, code_bytes, codebook_bytes in _codes(dim, budget / n - ID_OVERHEAD):
        if suffix != "SQ8" and code_bytes > DEFAULT_PQ_BYTES:
            continue
        if n * (code_bytes + ID_OVERHEAD) + quantizer_bytes + codebook_bytes <= budget:
            return suffix, code_bytes
    return None


def choose_factory(n: int, dim: int, memory_budget_mb: float | None = None) -> str:
    """A FAISS factory string for `n` vectors of `dim` dimensions under an optional memory budget.

    The budget covers everything the index serialises: codes, ids, the id map, the coarse quantizer's
    centroids and the PQ codebook (the last two matter below ~1M vectors). Fewer inverted lists (down to a
    quarter) are taken only when the code they make room for is over a third larger."""
    if n <= 0:
        raise IndexError_("cannot choose an index for 0 vectors")
    budget = math.inf if memory_budget_mb is None else memory_budget_mb * 2**20
    if n < FLAT_MAX and n * (4 * dim + 8) <= budget:
        return "Flat"
    nlist = _nlist_for(n)
    if memory_budget_mb is None:
        m = next(m for m in (DEFAULT_PQ_BYTES, 32, 16, 8, 4, 2, 1) if dim % m == 0 and (m <= dim // 2 or dim < 2))
        return f"{_quantizer(nlist, dim)[0]},PQ{m}"
    fits = [(nl, _largest_code(n, dim, max(nl, 16), budget)) for nl in (nlist, nlist // 2, nlist // 4)]
    best = max((code[1] for _, code in fits if code), default=0)
    for nl, code in fits:  # the most lists whose code is at least 3/4 of the largest affordable one
        if code and code[1] >= 0.75 * best:
            return f"{_quantizer(max(nl, 16), dim)[0]},{code[0]}"
    raise IndexError_(f"a memory budget of {memory_budget_mb} MB is too small for {n} vectors")


def make_index(factory: str, dim: int) -> faiss.Index:
    """An empty index that takes explicit int64 ids (IVF natively, anything else inside IndexIDMap2)."""
    if re.search(r"IDMap", factory):
        raise IndexError_(f"factory {factory!r}: leave out IDMap, ids are added by clipforge")
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exn:
        raise IndexError_(f"invalid FAISS factory string {factory!r}: {str(exn).splitlines()[0]}") from exn
    ivf = ivf_of(index)
    if ivf is None:
        return faiss.IndexIDMap2(index)
    ivfpq = faiss.downcast_index(ivf)
    if isinstance(ivfpq, faiss.IndexIVFPQ):
        ivfpq.do_polysemous_training = False  # the factory turns it on; it costs minutes and search never uses it
    return index


def ivf_of(index: faiss.Index) -> Any:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def training_size(index: faiss.Index) -> int:
    """How many sample vectors training wants (0: no training needed)."""
    if index.is_trained:
        return 0
    ivf = ivf_of(index)
    nlist = ivf.nlist if ivf is not None else 256
    return int(min(max(40 * nlist, 30_000), 300_000))  # faiss wants >= 39 points per centroid


def train(index: faiss.Index, sample: np.ndarray, factory: str) -> None:
    if index.is_trained:
        return
    ivf = ivf_of(index)
    if ivf is not None:
        ivf.cp.niter = 10  # enough for a coarse quantizer; halves the k-means time against faiss's 25
        if sample.shape[0] < ivf.nlist:
            raise IndexError_(f"factory {factory!r} needs at least {ivf.nlist} vectors to train, got {sample.shape[0]}")
    try:
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    except RuntimeError as exn:
        raise IndexError_(f"cannot train {factory!r} on {sample.shape[0]} vectors: {str(exn).splitlines()[0]}") from exn


def add_chunks(index: faiss.Index, chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
    """Add (ids [n], vectors [n, D]) chunks: memory stays one chunk, whatever the total."""
    for ids, vectors in chunks:
        if len(ids):
            index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))


_MAP_LOCK = threading.Lock()


def reconstruct(index: faiss.Index, ids: list[int]) -> np.ndarray:
    """[len(ids), D] stored vectors (decoded codes) by id; an IVF builds its id map on the first call
    (one pass over the lists). Unknown ids raise RuntimeError."""
    ivf = ivf_of(index)
    if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
        with _MAP_LOCK:  # searches running meanwhile do not use the map
            if ivf.direct_map.type == faiss.DirectMap.NoMap:
                ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    if not len(ids):
        return np.zeros((0, index.d), np.float32)
    return np.stack([index.reconstruct(int(i)) for i in ids])


def write(index: faiss.Index, path: str) -> None:
    """Write the index without its id map (rebuilt on demand by `reconstruct`)."""
    ivf = ivf_of(index)
    if ivf is not None and ivf.direct_map.type != faiss.DirectMap.NoMap:
        ivf.set_direct_map_type(faiss.DirectMap.NoMap)  # callers write their own copies, never a live index
    faiss.write_index(index, path)


def remove(index: faiss.Index, ids: np.ndarray) -> bool:
    """Remove ids from the index; False if this index type cannot (the caller then keeps a tombstone)."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    try:
        index.remove_ids(faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids)))
    except RuntimeError:
        return False
    return True


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


def _candidates(nlist: int, hnsw: bool) -> Iterator[dict[str, int]]:
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
    for params in _candidates(ivf.nlist, hnsw):
        apply_search_params(index, params)
        recall = recall_at_k(index.search(queries, k)[1], truth)
        if recall < best[1] + 0.003:  # plateau: the codes, not the probing, limit recall; stay cheaper
            break
        best = (params, recall)
        if recall >= target:
            break
    apply_search_params(index, best[0])
    return best
