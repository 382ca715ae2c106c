"""Service benchmark, in one run: the offline encoder limit vs the served API over loopback.

1. offline: batched image encoding in this process (the limit), and the single-image model time;
2. served: `uvicorn service.app:create_app` in a subprocess on 127.0.0.1, image-embed requests from 1, 16
   and 64 concurrent keep-alive clients: throughput, p50/p99 latency;
3. a 100-label classify with the label set's text embeddings uncached (a new label set each time) vs cached;
4. a soak with 32 clients on a request mix (embed image/text, classify, search): errors and server memory.

    python benchmarks/service_bench.py [--bundle DIR] [--arch cf-tiny-vit] [--seconds 6] [--soak 60]

Targets: served >= 0.8x offline at 16+ clients; single-request p50 overhead <= 10 ms above model time;
cached label set >= 5x faster; soak ends with 0 errors and bounded memory.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
HOST = "127.0.0.1"  # loopback only
Request = Callable[[], bytes]


def jpeg(rgb: tuple[int, int, int], size: int = 64) -> bytes:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), (128, 128, 128))
    ImageDraw.Draw(im).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=rgb)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_bundle(arch: str, out: Path) -> Path:
    import torch

    from encoders.bundle import save_bundle
    from encoders.model import build_model, resolve_model_config

    torch.manual_seed(0)
    name, cfg = resolve_model_config(arch)
    save_bundle(build_model(cfg), out, arch=name, model_cfg=cfg)  # throughput does not depend on the weights
    return out


def make_index(bundle_dir: Path, out: Path, n: int = 64) -> Path | None:
    try:
        from encoders.bundle import load_bundle
        from index import Index
    except ImportError:
        return None
    folder = out.parent / "images"
    folder.mkdir(parents=True)
    rng = random.Random(0)
    for i in range(n):
        (folder / f"{i:03d}.jpg").write_bytes(jpeg((rng.randrange(256), rng.randrange(256), rng.randrange(256))))
        (folder / f"{i:03d}.txt").write_text(f"picture number {i}")
    Index.build(load_bundle(bundle_dir, device="cpu"), str(folder), out, progress=False).close()
    return out


class Offline:
    """The limit: decode + preprocess + encode in batches in this process, with the server idle."""

    def __init__(self, bundle_dir: Path, image: bytes, batch: int) -> None:
        from encoders.bundle import load_bundle

        self.bundle = load_bundle(bundle_dir, device="cpu")
        self.image, self.batch = image, batch
        # on one dedicated thread, as the server runs its encoder (the same code path minus HTTP)
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="offline")
        for _ in range(3):  # warm-up: oneDNN primitives, allocator
            self.thread.submit(self.run, batch).result()

    def run(self, n: int) -> None:
        import torch

        b = self.bundle
        b.encode_images(torch.stack([b.preprocess([b.load_image(self.image)])[0] for _ in range(n)]))

    def images_per_s(self, seconds: float) -> float:
        return self.thread.submit(self._images_per_s, seconds).result()

    def single_ms(self, repeats: int = 40) -> float:
        return self.thread.submit(self._single_ms, repeats).result()

    def _images_per_s(self, seconds: float) -> float:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            self.run(self.batch)
            n += self.batch
        return n / (time.perf_counter() - t0)

    def _single_ms(self, repeats: int) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            self.run(1)
            times.append(time.perf_counter() - t)
        return 1000 * statistics.median(times)


# --- a minimal keep-alive HTTP/1.1 client: cheap, so the 2 cores go to the server, not to the load ---
def post(path: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


async def roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> tuple[int, bytes]:
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next((int(v) for k, _, v in (x.partition(":") for x in lines[1:]) if k.lower() == "content-length"), 0)
    return status, await reader.readexactly(length)


async def load(port: int, clients: int, seconds: float, make: Request, warmup: float = 1.0) -> dict[str, Any]:
    lat: list[float] = []
    errors = 0
    t_start = time.perf_counter()
    t_measure, t_end = t_start + warmup, t_start + warmup + seconds

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while (now := time.perf_counter()) < t_end:
                try:
                    status, _ = await roundtrip(reader, writer, make())
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(HOST, port)
                    continue
                if now >= t_measure:
                    lat.append(time.perf_counter() - now)
                    errors += status != 200
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    lat.sort()
    pct = lambda q: 1000 * lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")  # noqa: E731
    return {"rps": len(lat) / seconds, "p50": pct(0.5), "p99": pct(0.99), "n": len(lat), "errors": errors}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(bundle: Path, index: Path | None, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CLIPFORGE_BUNDLE": str(bundle), "CLIPFORGE_DEVICE": "cpu", "CLIPFORGE_MAX_LABELS": "256"}
    if index is not None:
        env["CLIPFORGE_INDEX"] = str(index)
    cmd = [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory", "--host", HOST, "--port", str(port),
           "--log-level", "warning", "--no-access-log"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=1) as s:
                s.sendall(get("/readyz"))
                if b" 200 " in s.recv(1024):
                    return proc
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("the server exited during start-up")
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not become ready")


async def classify_latency(port: int, b64: str, n: int) -> tuple[float, float]:
    """p50 ms of a 100-label classify with a new label set each time (uncached) vs a repeated one (cached),
    alternating, so the load other jobs put on the machine hits both alike."""
    reader, writer = await asyncio.open_connection(HOST, port)
    times: dict[bool, list[float]] = {False: [], True: []}
    fixed = [f"object {i}" for i in range(100)]
    for r in range(-1, n):
        for cached in (False, True):
            labels = fixed if cached else [f"object {i} kind {r}-{random.random():.6f}" for i in range(100)]
            t = time.perf_counter()
            status, body = await roundtrip(reader, writer, post("/v1/classify", {"images": [b64], "labels": labels}))
            assert status == 200, body[:200]
            if r >= 0:  # round -1 fills the cache for the fixed set
                times[cached].append(time.perf_counter() - t)
    writer.close()
    return 1000 * statistics.median(times[False]), 1000 * statistics.median(times[True])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", help="a bundle directory (default: a random-init --arch bundle)")
    ap.add_argument("--arch", default="cf-tiny-vit", help="architecture of the random-init bundle")
    ap.add_argument("--seconds", type=float, default=6.0, help="measurement time per served load level")
    ap.add_argument("--soak", type=float, default=60.0, help="soak duration in seconds (32 clients)")
    ap.add_argument("--batch", type=int, default=64, help="offline batch size (= the server's max batch)")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="clipforge-bench-"))
    bundle = Path(a.bundle) if a.bundle else make_bundle(a.arch, tmp / "bundle")
    index = make_index(bundle, tmp / "index" / "idx")
    images = [jpeg((random.randrange(256), 40, 200)) for _ in range(16)]
    b64s = [base64.b64encode(im).decode() for im in images]
    print(f"bundle {bundle} ({a.arch if not a.bundle else 'given'}); index: {'64 images' if index else 'none'}")

    off = Offline(bundle, images[0], a.batch)
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    server = start_server(bundle, index, port)
    try:
        embed = lambda: post("/v1/embed", {"images": [random.choice(b64s)]})  # noqa: E731
        # offline and served alternate, so the load other jobs put on the machine hits both alike
        limits, served = {}, {}
        for c in (1, 16, 64):
            limits[c] = off.images_per_s(a.seconds / 2)
            served[c] = asyncio.run(load(port, c, a.seconds, embed))
        single_ms = off.single_ms()
        served[0] = asyncio.run(load(port, 1, a.seconds / 2, embed))  # right after the model-time measurement
        uncached, cached = asyncio.run(classify_latency(port, b64s[0], n=7))

        def mix() -> bytes:
            r = random.random()
            if r < 0.4:
                return embed()
            if r < 0.6:
                return post("/v1/embed", {"texts": [f"a photo of thing {random.randrange(1000)}"]})
            if r < 0.8 or index is None:
                return post("/v1/classify", {"images": [random.choice(b64s)], "labels": ["red", "green", "blue"]})
            return post("/v1/search", {"text": f"picture number {random.randrange(64)}", "k": 5})

        rss: list[float] = [rss_mb(server.pid)]

        async def soak() -> dict[str, Any]:
            async def sample() -> None:
                while True:
                    await asyncio.sleep(1.0)
                    rss.append(rss_mb(server.pid))

            sampler = asyncio.create_task(sample())
            out = await load(port, 32, a.soak, mix, warmup=0.0)
            sampler.cancel()
            return out

        soaked = asyncio.run(soak())
        alive = server.poll() is None and asyncio.run(load(port, 1, 0.2, lambda: get("/readyz"), 0))["errors"] == 0
    finally:
        server.terminate()
        server.wait(timeout=30)

    # --- report ---
    print(f"\nimage embed, one {len(images[0])}-byte JPEG per request; offline = decode+preprocess+encode in "
          f"batches of {a.batch} in the benchmark process, measured just before each served level")  # fmt: skip
    print(f"\n{'clients':>8} {'offline/s':>10} {'served/s':>9} {'ratio':>7} {'p50 ms':>9} {'p99 ms':>9} {'errors':>7}")
    for c in (1, 16, 64):
        r = served[c]
        print(f"{c:>8} {limits[c]:>10.1f} {r['rps']:>9.1f} {r['rps'] / limits[c]:>6.2f}x {r['p50']:>9.2f} "
              f"{r['p99']:>9.2f} {r['errors']:>7}")  # fmt: skip
    overhead = served[0]["p50"] - single_ms
    print(f"single request: model time (decode+preprocess+encode of 1 image) {single_ms:.2f} ms, "
          f"served p50 {served[0]['p50']:.2f} ms")  # fmt: skip
    ratio16, ratio64 = served[16]["rps"] / limits[16], served[64]["rps"] / limits[64]
    half = rss[len(rss) // 2 :]
    growth = max(half) - half[0] if half else 0.0
    bounded = growth < max(20.0, 0.05 * half[0])
    rows = [
        ("served / offline at 16 clients", f"{ratio16:.2f}x", ">= 0.8x", ratio16 >= 0.8),
        ("served / offline at 64 clients", f"{ratio64:.2f}x", ">= 0.8x", ratio64 >= 0.8),
        ("single-request p50 overhead", f"{overhead:.2f} ms", "<= 10 ms", overhead <= 10),
        (
            "100-label classify uncached / cached p50",
            f"{uncached:.1f} / {cached:.1f} ms = {uncached / cached:.1f}x",
            ">= 5x",
            uncached / cached >= 5,
        ),  # fmt: skip
        (
            f"soak {a.soak:.0f} s x 32 clients: requests, errors",
            f"{soaked['n']} req, {soaked['errors']} errors",
            "0 errors",
            soaked["errors"] == 0 and alive,
        ),  # fmt: skip
        (
            "soak server RSS start / peak / end",
            f"{rss[0]:.0f} / {max(rss):.0f} / {rss[-1]:.0f} MB",
            "bounded",
            bounded,
        ),  # fmt: skip
    ]
    print(f"\n{'check':<44} {'measured':<34} {'target':<10} result")
    for name, got, target, ok in rows:
        print(f"{name:<44} {got:<34} {target:<10} {'PASS' if ok else 'FAIL'}")
    print(
        f"(soak p50 {soaked['p50']:.1f} ms, p99 {soaked['p99']:.1f} ms; RSS growth over the second half {growth:.1f} MB)"
    )


if __name__ == "__main__":
    main()
