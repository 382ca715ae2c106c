"""What serving a fusion head adds per (image, text) pair, beyond the two encodes.

1. offline: in this process, per request of N pairs: decode + preprocess the N images and encode them, encode
   the N texts (the server's own functions, as service_bench's offline limit), `head.predict`;
2. served: `uvicorn clipforge.service.app:create_app` in a subprocess on 127.0.0.1 with the head
   (CLIPFORGE_HEADS), POST /v1/heads/{name}/predict with the same N base64 images and N texts, one request
   at a time on a keep-alive connection, alternating with an offline request (both see the same machine
   load); every request asks new texts, so the embedding cache never helps (a last column: cached texts).

overhead per pair = (served median - offline median) / N. Target: <= 1 ms per pair at the server's default
pair limit (16 per request), where HTTP, parsing and the batching window are shared by the pairs; the
1-pair row shows what one lone pair pays (the same per-request cost as any route's, see service_bench).

    python benchmarks/fusion_serve_bench.py [--bundle DIR] [--head DIR] [--arch cf-tiny-vit] [--pairs 1,4,16]
                                            [--repeats 30]
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.service_bench import (  # noqa: E402
    HOST,
    free_port,
    jpeg,
    make_bundle,
    post,
    roundtrip,
    run_loop,
    server_stack,
    start_server,
    stop_server,
)

TARGET_MS = 1.0


def make_head(bundle: Any, out: Path) -> Path:
    """A random-init `concat` head (its time does not depend on its weights)."""
    import torch

    from clipforge.fusion import build_fusion, save_head

    torch.manual_seed(0)
    module = build_fusion("concat", dim=bundle.embed_dim, out=1)
    return save_head(out, module, task="binary", labels=["no", "yes"], bundle_fingerprint=bundle.fingerprint)


def images(n: int) -> list[bytes]:
    return [jpeg(((37 * i) % 256, (91 * i) % 256, (151 * i) % 256)) for i in range(n)]


def texts(n: int, request: int) -> list[str]:
    return [f"is there a red circle? (question {request}.{i})" for i in range(n)]


class Offline:
    """The two encodes with the server's own functions (`Engine.prepare_images` + `encode_pixel_batch`,
    `encode_text_batch`), then `head.predict`: in this process, on this thread, the server idle meanwhile."""

    def __init__(self, bundle_dir: Path, bundle: Any, head: Any) -> None:
        from clipforge.service.engine import Engine
        from clipforge.service.settings import Settings

        self.engine = Engine(bundle, Settings(bundle=bundle_dir, device="cpu", decode_processes=0))
        self.head = head

    def __call__(self, blobs: list[bytes], questions: list[str]) -> float:
        e, t = self.engine, time.perf_counter()
        image_features = e.encode_pixel_batch(e.prepare_images([(b, i) for i, b in enumerate(blobs)]))  # [N, D]
        text_features = e.encode_text_batch(questions)  # [N, D]
        self.head.predict(image_features, text_features)  # [N, 2]
        return 1000 * (time.perf_counter() - t)


async def measure(port: int, name: str, offline: Offline, n: int, repeats: int) -> dict[str, float]:
    """Median ms per request of N pairs: offline and served alternately (so both see the same load from
    whatever else runs on the machine), new texts every time; then served with one repeated text list."""
    import asyncio

    blobs = images(n)
    b64 = [base64.b64encode(b).decode() for b in blobs]
    path = f"/v1/heads/{name}/predict"
    reader, writer = await asyncio.open_connection(HOST, port)

    async def served(questions: list[str]) -> float:
        req = post(path, {"images": b64, "texts": questions})
        t = time.perf_counter()
        status, body = await roundtrip(reader, writer, req)
        assert status == 200, body[:300]
        return 1000 * (time.perf_counter() - t)

    off, on, cached = [], [], []
    settle = 0.05  # s between measurements: the other side's OpenMP threads stop spinning on the 2 cores
    for r in range(-3, repeats):  # 3 warm-up rounds
        o = offline(blobs, texts(n, 10_000 * n + r))
        await asyncio.sleep(settle)
        s = await served(texts(n, 20_000 * n + r))
        await asyncio.sleep(settle)
        c = await served(texts(n, -1))
        await asyncio.sleep(settle)
        if r >= 0:
            off.append(o), on.append(s), cached.append(c)
    writer.close()
    return {"offline": statistics.median(off), "served": statistics.median(on), "cached": statistics.median(cached)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", help="a bundle directory (default: a random-init bundle of --arch)")
    ap.add_argument("--head", help="a head folder trained on --bundle (default: a random-init concat head)")
    ap.add_argument("--arch", default="cf-tiny-vit", help="architecture of the random-init bundle")
    ap.add_argument("--pairs", default="1,4,16", help="pairs per request, comma-separated")
    ap.add_argument("--repeats", type=int, default=30, help="requests per row (after 3 warm-up requests)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads, offline and in the server (0: torch's default). 1 by default: on a shared "
        "machine, an encoder's OpenMP threads stall each other whenever one is descheduled",
    )
    ap.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "onnx", "auto"],
        help="encoder backend, offline and in the server (CLIPFORGE_BACKEND); --threads applies to "
        "ONNX Runtime's sessions too",
    )
    a = ap.parse_args()
    os.environ["CLIPFORGE_BACKEND"] = a.backend

    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
        os.environ["CLIPFORGE_TORCH_THREADS"] = str(a.threads)

    from clipforge.encoders.bundle import load_bundle
    from clipforge.fusion import load_head

    with tempfile.TemporaryDirectory(prefix="fusion-serve-bench-") as tmp:
        bundle_dir = Path(a.bundle) if a.bundle else make_bundle(a.arch, Path(tmp) / "bundle")
        bundle = load_bundle(bundle_dir, device="cpu", backend=a.backend)
        head_dir = Path(a.head) if a.head else make_head(bundle, Path(tmp) / "head")
        head = load_head(head_dir, fingerprint=bundle.fingerprint)
        sizes = [int(s) for s in a.pairs.split(",")]
        print(
            f"bundle {bundle.meta.get('arch')} (dim {bundle.embed_dim}, {a.backend}), head {head.name} ({head.kind}, "
            f"{head.task}); {server_stack()}; torch threads {torch.get_num_threads()}; {os.cpu_count()} cores"
        )
        offline = Offline(bundle_dir, bundle, head)
        os.environ["CLIPFORGE_HEADS"] = str(head_dir)  # start_server passes this process's environment on
        os.environ["CLIPFORGE_MAX_PAIRS"] = str(max(sizes))
        port = free_port()
        proc = start_server(bundle_dir, None, port)
        try:
            rows = {n: run_loop(measure(port, head.name, offline, n, a.repeats)) for n in sizes}
        finally:
            stop_server(proc)

    print(f"{'pairs':>5} {'offline ms':>11} {'served ms':>10} {'overhead ms/pair':>17} {'texts cached: served ms':>24}")
    for n, r in rows.items():
        over = (r["served"] - r["offline"]) / n
        print(f"{n:>5} {r['offline']:>11.2f} {r['served']:>10.2f} {over:>17.3f} {r['cached']:>24.2f}")
    n = max(sizes)
    overhead = (rows[n]["served"] - rows[n]["offline"]) / n
    verdict = "PASS" if overhead <= TARGET_MS else "FAIL"
    print(f"{verdict}: served predict adds {overhead:.3f} ms per pair at {n} pairs/request (target <= {TARGET_MS} ms)")


if __name__ == "__main__":
    main()
