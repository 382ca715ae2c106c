"""What recall@10 the index benchmark's vectors allow at a given code size: the numbers behind RESULTS.md.

    python benchmarks/index_limits.py            # 100k vectors, ~2 min on 2 cores
    python benchmarks/index_limits.py --rq       # also residual quantisers (~10 more minutes)

On `index_bench.clustered` vectors (the same generator and seeds), against exact search:
- the inner-product gap between the 10th and 11th true neighbour, and how much the isotropic noise part of a
  vector moves an inner product with a query;
- scalar codes (SQ4/6/8, no inverted file) and IVF + PQ64 (8-bit);
- an oracle that keeps each vector's cluster centre and in-cluster subspace coordinates exactly and drops
  only the noise, alone and with exact re-ranking of its top candidates.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from index_bench import DIM, THREADS, clustered  # noqa: E402


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth, strict=True)]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--rq", action="store_true", help="also IVF + residual quantisers RQ8x8, RQ16x8 (slow to train)")
    a = p.parse_args()
    faiss.omp_set_num_threads(THREADS)
    xb, clean = clustered(a.n, seed=1, signal=True)
    xq = clustered(a.queries, seed=7)
    flat = faiss.IndexFlatIP(DIM)
    flat.add(xb)
    scores, truth = flat.search(xq, 11)
    gap = scores[:, 9] - scores[:, 10]
    noise_ip = np.abs(np.einsum("qd,qd->q", xq, xb[truth[:, 0]] - clean[truth[:, 0]]))
    truth = truth[:, :10]
    print(f"{a.n} vectors, {a.queries} queries, dim {DIM}")
    print(f"gap between the 10th and 11th true neighbour's inner product: median {np.median(gap):.4f}")
    print(f"|inner product of a query with its nearest neighbour's noise part|: median {np.median(noise_ip):.4f}")

    rows = []
    for factory in ("SQ4", "SQ6", "SQ8"):
        idx = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
        idx.train(xb)
        idx.add(xb)
        rows.append((factory, DIM * int(factory[2:]) / 8, recall(idx.search(xq, 10)[1], truth)))
    factories = ["IVF1024,PQ64"] + (["IVF1024,RQ8x8", "IVF1024,RQ16x8"] if a.rq else [])
    for factory in factories:
        t = time.perf_counter()
        idx = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(idx)
        ivf.cp.niter = 10
        idx.train(xb[: 50_000 if "PQ" in factory else 30_000])
        idx.add(xb)
        best = 0.0
        for nprobe in (1, 2, 4, 8, 16):
            ivf.nprobe = nprobe
            best = max(best, recall(idx.search(xq, 10)[1], truth))
        size = faiss.serialize_index(idx).size / a.n
        rows.append((f"{factory} (best nprobe <= 16, {time.perf_counter() - t:.0f} s)", size, best))
    oracle = faiss.IndexFlatIP(DIM)
    oracle.add(clean)
    rows.append(
        (
            "oracle: centre + subspace coordinates exact, noise dropped",
            float("nan"),
            recall(oracle.search(xq, 10)[1], truth),
        )
    )
    for k in (20, 50):
        cand = oracle.search(xq, k)[1]
        exact = np.einsum("qd,qkd->qk", xq, xb[cand])
        reranked = np.take_along_axis(cand, np.argsort(-exact, axis=1)[:, :10], axis=1)
        rows.append((f"  ... its top {k} re-ranked with the full vectors", float("nan"), recall(reranked, truth)))
    print(f"{'code':<70} {'B/vector':>9} {'recall@10':>10}")
    for name, size, r in rows:
        shown = "-" if np.isnan(size) else f"{size:.1f}"  # the oracle is not a code
        print(f"{name:<70} {shown:>9} {r:>10.3f}")


if __name__ == "__main__":
    main()
