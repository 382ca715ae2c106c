"""One FAISS index: made from a factory string, trained, filled, read back by id, pruned, written.

Every index takes explicit int64 ids (the item ids of the metadata table).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import Any

import faiss
import numpy as np

from clipforge.index.types import IndexInputError


def faiss_reason(exn: Exception) -> str:
    """FAISS's own words from its exception, without the C++ signature and source location before them."""
    text = str(exn).splitlines()[0] if str(exn) else type(exn).__name__
    return re.sub(r"^Error in .*? at \S+:\d+: (Error: )?", "", text)[:200]


def check_factory(factory: Any, dim: int) -> faiss.Index:
    """The empty index `factory` makes, or a one-line error. Before FAISS sees the string: parameters that
    parse but build an index that cannot answer (IVF0: no lists, recall -1) or that abort the process
    (HNSW0/HNSW1, PQ4x0) are refused."""
    if not isinstance(factory, str) or not factory.strip():
        raise IndexInputError(f"the factory must be a FAISS factory string such as 'IVF1024,PQ64', got {factory!r}")
    if "IDMap" in factory:
        raise IndexInputError(f"factory {factory!r}: leave out IDMap, ids are added by clipforge")
    if any(int(n) == 0 for n in re.findall(r"\d+", factory)):
        raise IndexInputError(
            f"factory {factory!r}: every size in it (lists, links, sub-quantizers, bits, dimensions) must be at least 1"
        )
    if any(int(m) < 2 for m in re.findall(r"HNSW(\d+)", factory)):
        raise IndexInputError(f"factory {factory!r}: an HNSW graph needs at least 2 links per node (e.g. HNSW32)")
    try:
        return faiss.index_factory(dim, factory.strip(), faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exn:
        raise IndexInputError(
            f"invalid FAISS factory string {factory!r} for {dim} dimensions: {faiss_reason(exn)}"
        ) from exn


def make_index(factory: str, dim: int) -> faiss.Index:
    """An empty index that takes explicit int64 ids (IVF natively, anything else inside IndexIDMap2)."""
    index = check_factory(factory, dim)
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
            raise IndexInputError(
                f"factory {factory!r} needs at least {ivf.nlist} vectors to train, got {sample.shape[0]}"
            )
    try:
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    except RuntimeError as exn:
        raise IndexInputError(f"cannot train {factory!r} on {sample.shape[0]} vectors: {faiss_reason(exn)}") from exn


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
