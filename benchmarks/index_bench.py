"""Index benchmark: clipforge's chosen FAISS index vs exact IndexFlatIP on clustered synthetic vectors.

    python benchmarks/index_bench.py                  # 100k and 1M x 512-d, with autofaiss (~50 min on 2 cores)
    python benchmarks/index_bench.py --no-autofaiss   # the same without autofaiss (~6 min)
    python benchmarks/index_bench.py --quick          # 100k only

For each size: build time, bytes per vector (serialised index / n), recall@10 against exact search
(|approx top-10 ∩ exact top-10| / 10, mean over held-out queries), and QPS at batch 1 and batch 64 on
2 threads, for exact search and for the index `clipforge.index.choice.choose_factory` picks (trained on a sample,
filled in chunks, nprobe tuned to recall 0.95 on separate tuning queries, exactly as `index build` does),
once with its codes alone and once as `index build` now serves it by default: the same codes in RAM plus
float16 copies of the vectors on disk (memory-mapped) that re-rank k * k_factor candidates exactly, nprobe
and k_factor tuned together (index/refine.py). "B/vec" is what the index holds in RAM (the serialised FAISS
index / n); "disk B" adds the float16 copies. The re-ranked index is also timed at batch 1 for one pass
right after its copies are evicted from the page cache (posix_fadvise DONTNEED): reads from the disk.
Targets: recall@10 >= 0.95 at >= 20x exact QPS with <= 100 bytes per vector.

The vectors imitate CLIP embeddings: L2-normalised, clustered (1,000 clusters), and of low intrinsic
dimension (each cluster spreads along 16 random directions of the 512), plus a little isotropic noise.
Besides the strict 10-recall@10 the table shows 1-recall@10 (the exact nearest neighbour is in the top 10).
Beside them, autofaiss (https://github.com/criteo/autofaiss) builds its own choice from the same vectors
(saved to .npy) under the same memory budget and threads; it needs numpy<2, so it runs in its own venv
under benchmarks/.cache/autofaiss-venv, created on first use. Its index is measured twice: with the search
parameters autofaiss chose (for its default 10 ms query-time bound) and re-tuned by clipforge's tuner to
the same recall target, which compares recall at equal memory and similar speed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipforge.index import (
    choice,  # noqa: E402
    faiss_index,  # noqa: E402
    tuning,  # noqa: E402
)
from clipforge.index import refine as rx  # noqa: E402

DIM = 512
THREADS = 2
ROOT = Path(__file__).resolve().parents[1]
AUTOFAISS_VENV = ROOT / "benchmarks" / ".cache" / "autofaiss-venv"  # git-ignored, like the open_clip overlay
# autofaiss pins numpy<2 (clipforge uses numpy 2), hence its own venv; pyarrow>=18 refuses numpy 1.x, and
# autofaiss 2.18 calls faiss.OPQMatrix(d, M=..) with keywords, which faiss-cpu 1.15 (SWIG) rejects.
AUTOFAISS_PINS = ("autofaiss==2.18.0", "pyarrow<18", "faiss-cpu==1.7.4")
AUTOFAISS_RUN = """
import json, sys, time
from autofaiss import build_index
emb_dir, out, budget, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t0 = time.perf_counter()
build_index(embeddings=emb_dir, index_path=out + "/knn.index", index_infos_path=out + "/infos.json",
            max_index_memory_usage=budget, current_memory_available="8G", nb_cores=threads, metric_type="ip",
            verbose=30)
json.dump({"build_s": time.perf_counter() - t0}, open(out + "/time.json", "w"))
"""


def clustered(
    n: int, seed: int, clusters: int = 1000, latent: int = 16, groups: int = 16, dim: int = DIM, signal: bool = False
) -> Any:
    """[n, dim] float32, L2-normalised: cluster centre + a point of its cluster's `latent`-dim subspace + noise.

    Clusters share `groups` random subspaces; data and queries use the same centres and subspaces. With
    `signal`, also the same vectors without their noise (scaled by the same norms): (vectors, signal)."""
    base = np.random.default_rng(1234)
    centers = base.standard_normal((clusters, dim)).astype(np.float32) / np.sqrt(dim)
    bases = base.standard_normal((groups, latent, dim)).astype(np.float32) / np.sqrt(dim)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    clean = np.empty((n, dim), np.float32) if signal else None
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        c = rng.integers(0, clusters, m)
        noise = rng.standard_normal((m, dim)).astype(np.float32) * (0.1 / np.sqrt(dim))
        x = centers[c]
        z = rng.standard_normal((m, latent)).astype(np.float32) / np.sqrt(latent)
        for g in range(groups):
            rows = np.flatnonzero(c % groups == g)
            x[rows] += z[rows] @ bases[g]
        norms = np.linalg.norm(x + noise, axis=1, keepdims=True)
        out[start : start + m] = (x + noise) / norms
        if clean is not None:
            clean[start : start + m] = x / norms
    return (out, clean) if signal else out


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


def nbytes(index: Any) -> int:
    return int(faiss.serialize_index(index.index if isinstance(index, Refined) else index).size)


class Refined:
    """An index plus its float16 copies on disk, searched the way `index search` does (index/refine.py)."""

    def __init__(self, index: faiss.Index, path: Path, factor: int) -> None:
        self.index, self.path, self.factor = index, path, factor
        self.vectors = rx.Vectors([0], [np.load(path, mmap_mode="r")])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return rx.search(self.index, self.vectors, queries, k, self.factor)

    def evict(self) -> None:
        """Drop the copies' pages from the page cache, so the next reads come from the disk."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cold_qps(index: Refined, queries: np.ndarray) -> float:
    """Batch-1 QPS of one pass over `queries` right after evicting the copies from the page cache."""
    index.evict()
    t0 = time.perf_counter()
    for q in queries:
        index.search(q[None], 10)
    return len(queries) / (time.perf_counter() - t0)


def prepare_autofaiss() -> Path:
    """The autofaiss venv's python, creating the venv on first use (PyPI, ~1 min)."""
    python = AUTOFAISS_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(AUTOFAISS_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *AUTOFAISS_PINS], check=True)
    return python


def run_autofaiss(xb: np.ndarray, budget_bytes: int, work: Path) -> tuple[faiss.Index, dict, float]:
    """autofaiss.build_index on the same vectors (saved as .npy) and budget, in its own venv and threads."""
    emb = work / "emb"
    emb.mkdir(parents=True, exist_ok=True)
    np.save(emb / "part.npy", xb)
    cmd = [str(prepare_autofaiss()), "-c", AUTOFAISS_RUN, str(emb), str(work), f"{budget_bytes}B", str(THREADS)]
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"autofaiss failed:\n{done.stderr[-3000:]}")
    infos = json.loads((work / "infos.json").read_text())
    build_s = json.loads((work / "time.json").read_text())["build_s"]
    index = faiss.read_index(str(work / "knn.index"))
    faiss.ParameterSpace().set_index_parameters(index, infos["index_param"])  # its choice (also saved with it)
    return index, infos, build_s


def measure(n: int, name: str, index: Any, build_s: float, test_q: np.ndarray, truth: np.ndarray) -> dict:
    found = index.search(test_q, 10)[1]
    disk = nbytes(index) + (index.path.stat().st_size if isinstance(index, Refined) else 0)
    return {
        "n": n,
        "index": name,
        "build_s": build_s,
        "bytes_per_vector": nbytes(index) / n,
        "disk_per_vector": disk / n,
        "recall@10": tuning.recall_at_k(found, truth),
        "1-recall@10": one_recall(found, truth),
        "qps_b1": qps(index, test_q, 1),
        "qps_b64": qps(index, test_q, 64),
    }


def run(n: int, budget_per_vector: float, autofaiss: bool) -> list[dict]:
    t0 = time.perf_counter()
    xb = clustered(n, seed=1)
    tune_q, test_q = clustered(200, seed=2), clustered(500, seed=3)
    gen = time.perf_counter() - t0
    budget_mb = budget_per_vector * n / 2**20

    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(DIM)
    flat.add(xb)
    flat_build = time.perf_counter() - t0
    truth_test = flat.search(test_q, 10)[1]
    truth_tune = flat.search(tune_q, 10)[1]
    rows = [measure(n, "Flat (exact)", flat, flat_build, test_q, truth_test)]

    factory = choice.choose_factory(n, DIM, budget_mb)
    t0 = time.perf_counter()
    index = faiss_index.make_index(factory, DIM)
    sample = xb[np.random.default_rng(0).choice(n, size=min(n, faiss_index.training_size(index)), replace=False)]
    faiss_index.train(index, sample, factory)
    faiss_index.add_chunks(index, ((np.arange(s, min(s + 65_536, n)), xb[s : s + 65_536]) for s in range(0, n, 65_536)))
    params, tune_recall = tuning.tune(index, tune_q, truth_tune)
    build = time.perf_counter() - t0
    rows.append(measure(n, f"clipforge {factory} {params}", index, build, test_q, truth_test))
    print(f"# n={n}: data generated in {gen:.1f}s; clipforge tuning recall {tune_recall:.3f}", flush=True)

    # The default `index build`: the same codes in RAM, float16 copies on disk, nprobe and depth re-tuned.
    (ROOT / "benchmarks" / ".cache").mkdir(parents=True, exist_ok=True)  # absent with --no-autofaiss
    with tempfile.TemporaryDirectory(prefix="refine-", dir=ROOT / "benchmarks" / ".cache") as tmp:
        t0 = time.perf_counter()
        path = Path(tmp) / "images.vectors-0000.npy"
        rx.write_segment(
            path, 0, n, DIM, ((np.arange(s, min(s + 65_536, n)), xb[s : s + 65_536]) for s in range(0, n, 65_536))
        )
        refined = Refined(index, path, 1)
        params, refined.factor, tune_recall = rx.tune(index, refined.vectors, tune_q, truth_tune)
        row = measure(
            n,
            f"clipforge {factory} {params} + fp16 re-rank x{refined.factor}",
            refined,
            build + time.perf_counter() - t0,
            test_q,
            truth_test,
        )
        row["qps_cold_b1"] = cold_qps(refined, test_q)
        rows.append(row)
    print(
        f"# n={n}: re-rank tuning recall {tune_recall:.3f}; batch-1 QPS with the float16 copies evicted from "
        f"the page cache first: {row['qps_cold_b1']:.0f}",
        flush=True,
    )

    if autofaiss:
        with tempfile.TemporaryDirectory(prefix="autofaiss-", dir=ROOT / "benchmarks" / ".cache") as tmp:
            af, infos, af_build = run_autofaiss(xb, int(budget_mb * 2**20), Path(tmp))
        rows.append(
            measure(n, f"autofaiss {infos['index_key']} {infos['index_param']}", af, af_build, test_q, truth_test)
        )
        # The same index with clipforge's tuning (nprobe up to the recall target): recall at equal memory/speed.
        af_params, _ = tuning.tune(af, tune_q, truth_tune)
        rows.append(measure(n, f"autofaiss {infos['index_key']} retuned {af_params}", af, af_build, test_q, truth_test))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="100k vectors only")
    p.add_argument("--sizes", type=int, nargs="*", help="override the vector counts")
    p.add_argument("--budget", type=float, default=100.0, help="memory budget, bytes per vector (both indexes)")
    p.add_argument("--no-autofaiss", action="store_true", help="skip autofaiss (it needs PyPI the first time)")
    a = p.parse_args(argv)
    faiss.omp_set_num_threads(THREADS)
    sizes = a.sizes or ([100_000] if a.quick else [100_000, 1_000_000])
    print(
        f"faiss {faiss.__version__}, {THREADS} threads, dim {DIM}, clustered synthetic vectors, "
        f"memory budget {a.budget:g} B/vector for clipforge and autofaiss ({AUTOFAISS_VENV.name})"
    )
    print(
        f"{'n':>9} {'index':<72} {'build s':>8} {'B/vec':>7} {'disk B':>7} {'R@10':>6} {'1-R@10':>6} "
        f"{'QPS b1':>9} {'QPS b64':>9}"
    )
    t_all = time.perf_counter()
    for n in sizes:
        rows = run(n, a.budget, not a.no_autofaiss)
        for r in rows:
            print(
                f"{r['n']:>9} {r['index']:<72} {r['build_s']:>8.1f} {r['bytes_per_vector']:>7.1f} "
                f"{r['disk_per_vector']:>7.1f} "
                f"{r['recall@10']:>6.3f} {r['1-recall@10']:>6.3f} {r['qps_b1']:>9.0f} {r['qps_b64']:>9.0f}",
                flush=True,
            )
        exact = rows[0]
        for ours in rows[1:3]:
            speedup1, speedup64 = ours["qps_b1"] / exact["qps_b1"], ours["qps_b64"] / exact["qps_b64"]
            ok = ours["recall@10"] >= 0.95 and min(speedup1, speedup64) >= 20 and ours["bytes_per_vector"] <= a.budget
            print(
                f"# n={n}: {ours['index'][:60]}: speed-up vs exact {speedup1:.1f}x (batch 1), {speedup64:.1f}x "
                f"(batch 64); recall@10 {ours['recall@10']:.3f}; {ours['bytes_per_vector']:.1f} B/vector in RAM, "
                f"{ours['disk_per_vector']:.1f} on disk; target (R@10>=0.95, >=20x, <={a.budget:g} B in RAM) "
                f"{'MET' if ok else 'NOT MET'}",
                flush=True,
            )
        for ours, af in ((o, f) for o in rows[1:3] for f in rows[3:]):
            print(
                f"# n={n}: clipforge{' + re-rank' if 're-rank' in ours['index'] else ''} - autofaiss ({af['index'].split(' ', 2)[2][:40]}): recall@10 "
                f"{ours['recall@10'] - af['recall@10']:+.3f}, QPS b1 {ours['qps_b1'] / af['qps_b1']:.2f}x, "
                f"QPS b64 {ours['qps_b64'] / af['qps_b64']:.2f}x, B/vector "
                f"{ours['bytes_per_vector'] - af['bytes_per_vector']:+.1f}",
                flush=True,
            )
    print(f"# total {time.perf_counter() - t_all:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
