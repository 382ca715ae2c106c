"""Index benchmark: clipforge's chosen FAISS index vs exact IndexFlatIP on clustered synthetic vectors.

    python benchmarks/index_bench.py            # 100k and 1M x 512-d (~10 min on 2 cores)
    python benchmarks/index_bench.py --quick    # 100k only

For each size: build time, bytes per vector (serialised index / n), recall@10 against exact search
(|approx top-10 ∩ exact top-10| / 10, mean over held-out queries), and QPS at batch 1 and batch 64 on
2 threads, for exact search and for the index `index.factory.choose_factory` picks (trained on a sample,
filled in chunks, nprobe tuned to recall 0.95 on separate tuning queries, exactly as `index build` does).
Targets: recall@10 >= 0.95 at >= 20x exact QPS with <= 100 bytes per vector.

The vectors imitate CLIP embeddings: L2-normalised, clustered (1,000 clusters), and of low intrinsic
dimension (each cluster spreads along 16 random directions of the 512), plus a little isotropic noise.
Besides the strict 10-recall@10 the table shows 1-recall@10 (the exact nearest neighbour is in the top 10).
autofaiss itself is not run (optional; it is not installed in this environment): only its strategy is
represented, by choose_factory, which mirrors its rules.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index import factory as fx  # noqa: E402

DIM = 512
THREADS = 2


def clustered(
    n: int, seed: int, clusters: int = 1000, latent: int = 16, groups: int = 16, dim: int = DIM
) -> np.ndarray:
    """[n, dim] float32, L2-normalised: cluster centre + a point of its cluster's `latent`-dim subspace + noise.

    Clusters share `groups` random subspaces; data and queries use the same centres and subspaces."""
    base = np.random.default_rng(1234)
    centers = base.standard_normal((clusters, dim)).astype(np.float32) / np.sqrt(dim)
    bases = base.standard_normal((groups, latent, dim)).astype(np.float32) / np.sqrt(dim)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        c = rng.integers(0, clusters, m)
        x = centers[c] + rng.standard_normal((m, dim)).astype(np.float32) * (0.1 / np.sqrt(dim))
        z = rng.standard_normal((m, latent)).astype(np.float32) / np.sqrt(latent)
        for g in range(groups):
            rows = np.flatnonzero(c % groups == g)
            x[rows] += z[rows] @ bases[g]
        out[start : start + m] = x
    faiss.normalize_L2(out)
    return out


def one_recall(found: np.ndarray, truth: np.ndarray) -> float:
    """1-recall@10: the true nearest neighbour is among the 10 returned (faiss's "R@10")."""
    return float(np.mean([t[0] in f for f, t in zip(found, truth, strict=True)]))


def qps(index: faiss.Index, queries: np.ndarray, batch: int, seconds: float = 3.0) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for start in range(0, len(queries), batch):
            index.search(queries[start : start + batch], 10)
            n += len(queries[start : start + batch])
            if time.perf_counter() - t0 >= seconds:
                break
    return n / (time.perf_counter() - t0)


def nbytes(index: faiss.Index) -> int:
    return int(faiss.serialize_index(index).size)


def run(n: int) -> list[dict]:
    t0 = time.perf_counter()
    xb = clustered(n, seed=1)
    tune_q, test_q = clustered(200, seed=2), clustered(500, seed=3)
    gen = time.perf_counter() - t0
    rows = []

    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(DIM)
    flat.add(xb)
    flat_build = time.perf_counter() - t0
    truth_test = flat.search(test_q, 10)[1]
    truth_tune = flat.search(tune_q, 10)[1]
    rows.append({"n": n, "index": "Flat (exact)", "build_s": flat_build, "bytes_per_vector": nbytes(flat) / n,
                 "recall@10": 1.0, "1-recall@10": 1.0, "qps_b1": qps(flat, test_q, 1), "qps_b64": qps(flat, test_q, 64)})  # fmt: skip

    factory = fx.choose_factory(n, DIM)
    t0 = time.perf_counter()
    index = fx.make_index(factory, DIM)
    sample = xb[np.random.default_rng(0).choice(n, size=min(n, fx.training_size(index)), replace=False)]
    fx.train(index, sample, factory)
    fx.add_chunks(index, ((np.arange(s, min(s + 65_536, n)), xb[s : s + 65_536]) for s in range(0, n, 65_536)))
    params, tune_recall = fx.tune(index, tune_q, truth_tune)
    build = time.perf_counter() - t0
    found = index.search(test_q, 10)[1]
    recall, recall1 = fx.recall_at_k(found, truth_test), one_recall(found, truth_test)
    rows.append({"n": n, "index": f"{factory} {params}", "build_s": build, "bytes_per_vector": nbytes(index) / n,
                 "recall@10": recall, "1-recall@10": recall1, "qps_b1": qps(index, test_q, 1), "qps_b64": qps(index, test_q, 64)})  # fmt: skip
    print(f"# n={n}: data generated in {gen:.1f}s; tuning recall {tune_recall:.3f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="100k vectors only")
    p.add_argument("--sizes", type=int, nargs="*", help="override the vector counts")
    a = p.parse_args(argv)
    faiss.omp_set_num_threads(THREADS)
    sizes = a.sizes or ([100_000] if a.quick else [100_000, 1_000_000])
    print(f"faiss {faiss.__version__}, {THREADS} threads, dim {DIM}, clustered synthetic vectors")
    print("autofaiss: not run (optional, not installed here); index.factory.choose_factory follows its rules")
    header = (
        f"{'n':>9} {'index':<52} {'build s':>8} {'B/vec':>7} {'R@10':>6} {'1-R@10':>6} {'QPS b1':>9} {'QPS b64':>9}"
    )
    print(header)
    t_all = time.perf_counter()
    for n in sizes:
        rows = run(n)
        for r in rows:
            print(f"{r['n']:>9} {r['index']:<52} {r['build_s']:>8.1f} {r['bytes_per_vector']:>7.1f} "
                  f"{r['recall@10']:>6.3f} {r['1-recall@10']:>6.3f} {r['qps_b1']:>9.0f} {r['qps_b64']:>9.0f}", flush=True)  # fmt: skip
        exact, approx = rows
        speedup1, speedup64 = approx["qps_b1"] / exact["qps_b1"], approx["qps_b64"] / exact["qps_b64"]
        ok = approx["recall@10"] >= 0.95 and min(speedup1, speedup64) >= 20 and approx["bytes_per_vector"] <= 100
        print(f"# n={n}: speed-up vs exact {speedup1:.1f}x (batch 1), {speedup64:.1f}x (batch 64); "
              f"recall@10 {approx['recall@10']:.3f}; {approx['bytes_per_vector']:.1f} B/vector; "
              f"target (R@10>=0.95, >=20x, <=100 B) {'MET' if ok else 'NOT MET'}", flush=True)  # fmt: skip
    print(f"# total {time.perf_counter() - t_all:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
