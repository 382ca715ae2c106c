"""Which FAISS index for n vectors of a dimension under a memory budget: the factory string.

The choice follows autofaiss: exact `Flat` while the vectors are few (or fit the memory budget and are
under FLAT_MAX), otherwise an inverted file whose coarse quantizer is HNSW once there are many lists, with
PQ codes sized to the memory budget (SQ8 when the budget affords a byte per dimension). Every index uses
inner product on L2-normalised vectors, i.e. cosine similarity.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from clipforge.index.types import IndexInputError

FLAT_MAX = 50_000  # below this many vectors exact search is fast enough and needs no training
DEFAULT_PQ_BYTES = 64  # code bytes per vector when no budget is given (72 B/vector with its id, + centroids)
# Per vector beside its code: the int64 id in its inverted list. The id -> (list, offset) map that
# reconstruct(id) needs is not stored (16 B/vector in the file, more as a hashtable in RAM): `reconstruct`
# builds it on first use, and remove_ids scans the lists without it.
ID_OVERHEAD = 8
HNSW32_LINKS = 288  # bytes per centroid of an HNSW32 coarse quantizer beside the centroid: links, levels
HNSW_FROM = 4096  # lists from which the coarse quantizer is HNSW; below, exact search over the centroids is cheap


def _nlist_for(n: int) -> int:
    # ~4 sqrt(n) (autofaiss: 4-16 sqrt(n)). Many lists pay twice for PQ codes: they encode the residual to
    # the centroid, which shrinks as lists get finer, and each probe scans fewer codes (benchmarks/RESULTS.md,
    # "Index": the number of lists at equal bytes).
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
        raise IndexInputError("cannot choose an index for 0 vectors")
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
    raise IndexInputError(f"a memory budget of {memory_budget_mb} MB is too small for {n} vectors")
