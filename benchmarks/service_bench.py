"""Service benchmark, in one run: the offline encoder limit vs the served API over loopback.

1. offline: decode + preprocess + encode of one JPEG in batches, in this process, on one thread, with the
   server's own functions (`Engine.prepare_images` + `Engine.encode_pixel_batch`): the limit; and the
   single-image model time;
2. served: `uvicorn service.app:create_app` in a subprocess on 127.0.0.1, image-embed requests from 1, 16
   and 64 concurrent keep-alive clients: throughput, p50/p99 latency, and the CPU both sides spent;
3. a 100-label classify with the label set's text embeddings uncached (a new label set each time) vs cached;
4. a soak with 32 clients on a request mix (embed image/text, classify, search): errors and server memory.

    python benchmarks/service_bench.py [--arch cf-tiny-vit,ViT-B-32] [--batch 64,8] [--seconds 6] [--soak 60]
                                       [--decode-processes 0,1]

With several architectures, 1-2 run for each (random-init weights: throughput does not depend on them);
3-4 run for the first. The load generator is asyncio keep-alive sockets sending pre-built request bytes,
in this process (idle otherwise while the server is measured); its CPU use is measured and printed, as is
the server's, so that what the clients take from the cores the server needs is visible, not hidden.

Targets: served >= 0.8x offline at 16+ clients; single-request p50 overhead <= 10 ms above model time;
cached label set >= 5x faster; soak ends with 0 errors and bounded memory.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import random
import shutil
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
LEVELS = (1, 16, 64)
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

    from clipforge.encoders.bundle import save_bundle
    from clipforge.encoders.model import build_model, resolve_model_config

    torch.manual_seed(0)
    name, cfg = resolve_model_config(arch)
    save_bundle(build_model(cfg), out, arch=name, model_cfg=cfg)  # throughput does not depend on the weights
    return out


def make_index(bundle_dir: Path, out: Path, n: int = 64) -> Path | None:
    try:
        from clipforge.encoders.bundle import load_bundle
        from clipforge.index import Index
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


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()  # fields from 3 (state) on


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (the server's decode workers and their fork server)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError):  # exited meanwhile
                children.setdefault(int(_stat(int(d.name))[1]), []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        out.append(p := todo.pop())
        todo += children.get(p, [])
    return out


def cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by this process, or by process `pid` and its descendants."""
    if pid is None:
        return time.process_time()
    total = 0
    for p in process_tree(pid):
        try:
            fields = _stat(p)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class Offline:
    """The limit: the server's decode + preprocess + encode functions, in batches, on one thread in this
    process, with the server idle. The same code as the server runs, minus HTTP and minus its overlap of
    decoding with encoding."""

    def __init__(self, bundle_dir: Path, image: bytes, batch: int) -> None:
        from clipforge.encoders.bundle import load_bundle
        from clipforge.service.engine import Engine
        from clipforge.service.settings import Settings

        # decode_processes=0 (and the engine is never started): everything runs on this one thread
        settings = Settings(bundle=bundle_dir, device="cpu", decode_processes=0)
        self.engine = Engine(load_bundle(bundle_dir, device="cpu"), settings)
        self.image, self.batch = image, batch
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="offline")  # as the server's inference thread
        self.thread.submit(self.run, 1).result()
        self.thread.submit(self.run, batch).result()  # warm-up: oneDNN primitives, allocator

    def run(self, n: int) -> None:
        e = self.engine
        e.encode_pixel_batch(e.prepare_images([(self.image, 0)] * n))  # type: ignore[arg-type]

    def measure(self, seconds: float) -> dict[str, float]:
        """images/s and CPU ms per image (all threads of this process) over at least one batch."""
        return self.thread.submit(self._measure, seconds).result()

    def _measure(self, seconds: float) -> dict[str, float]:
        n, c0, t0 = 0, cpu_s(), time.perf_counter()
        while n == 0 or time.perf_counter() - t0 < seconds:
            self.run(self.batch)
            n += self.batch
        wall, cpu = time.perf_counter() - t0, cpu_s() - c0
        return {"rate": n / wall, "cpu_ms": 1000 * cpu / n, "n": n, "wall": wall, "cpu": cpu}

    def single_ms(self, repeats: int) -> list[float]:
        def times() -> list[float]:
            out = []
            for _ in range(repeats):
                t = time.perf_counter()
                self.run(1)
                out.append(1000 * (time.perf_counter() - t))
            return out

        return self.thread.submit(times).result()


def combine_offline(parts: list[dict[str, float]]) -> dict[str, float]:
    n, wall, cpu = (sum(p[k] for p in parts) for k in ("n", "wall", "cpu"))
    return {"rate": n / wall, "cpu_ms": 1000 * cpu / n, "n": n, "wall": wall, "cpu": cpu}


async def served_single_ms(port: int, req: bytes, repeats: int) -> list[float]:
    """Latencies (ms) of `repeats` requests sent one after another on one keep-alive connection."""
    reader, writer = await asyncio.open_connection(HOST, port)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        status, body = await roundtrip(reader, writer, req)
        assert status == 200, body[:200]
        out.append(1000 * (time.perf_counter() - t))
    writer.close()
    return out


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
    status = int(head[9:12])
    i = head.lower().find(b"content-length:")
    length = int(head[i + 15 : head.index(b"\r\n", i)]) if i >= 0 else 0
    return status, await reader.readexactly(length)


def run_loop(coro: Any) -> Any:
    """asyncio.run, on uvloop when it is installed: a cheaper load generator."""
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


async def load(
    port: int, clients: int, seconds: float, make: Request, warmup: float = 1.0, pid: int = 0
) -> dict[str, Any]:
    """`clients` closed-loop keep-alive clients for warmup + seconds. Counts the requests that *complete*
    inside the measured window; at its end clients start nothing new and their last requests drain."""
    lat: list[float] = []
    errors = 0
    t_start = time.perf_counter()
    t_measure, t_end = t_start + warmup, t_start + warmup + seconds
    cpu: dict[str, float] = {}

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
                if t_measure <= (done := time.perf_counter()) <= t_end:
                    lat.append(done - now)
                    errors += status != 200
        finally:
            writer.close()

    async def meter() -> None:  # CPU of both sides over the measured window
        await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
        cpu["client"], cpu["server"] = -cpu_s(), -cpu_s(pid) if pid else 0.0
        await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
        cpu["client"] += cpu_s()
        cpu["server"] += cpu_s(pid) if pid else 0.0

    await asyncio.gather(meter(), *(client() for _ in range(clients)))
    return summarise(lat, errors, seconds, cpu["client"], cpu["server"])


def summarise(lat: list[float], errors: int, seconds: float, client_cpu: float, server_cpu: float) -> dict[str, Any]:
    lat = sorted(lat)
    pct = lambda q: 1000 * lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")  # noqa: E731
    n = max(len(lat), 1)
    return {
        "rps": len(lat) / seconds,
        "p50": pct(0.5),
        "p99": pct(0.99),
        "n": len(lat),
        "errors": errors,
        "lat": lat,
        "seconds": seconds,
        "client_cpu": client_cpu,
        "server_cpu": server_cpu,
        "client_cores": client_cpu / seconds,
        "server_cores": server_cpu / seconds,
        "client_ms": 1000 * client_cpu / n,
        "server_ms": 1000 * server_cpu / n,
    }


def combine(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several measured windows of the same load."""
    return summarise(
        [x for p in parts for x in p["lat"]],
        sum(p["errors"] for p in parts),
        sum(p["seconds"] for p in parts),
        sum(p["client_cpu"] for p in parts),
        sum(p["server_cpu"] for p in parts),
    )


def rss_mb(pid: int) -> float:
    """Resident MB of `pid` and its descendants (decode workers share pages with their fork server, so
    this over-counts them; it is for growth, not for the absolute size)."""
    total = 0.0
    for p in process_tree(pid):
        try:
            lines = Path(f"/proc/{p}/status").read_text().splitlines()
        except OSError:
            continue
        total += sum(int(line.split()[1]) for line in lines if line.startswith("VmRSS:")) / 1024
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(
    bundle: Path,
    index: Path | None,
    port: int,
    max_batch: int = 64,
    decode_processes: int | None = None,
    workers: int = 1,
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CLIPFORGE_BUNDLE": str(bundle),
        "CLIPFORGE_DEVICE": "cpu",
        "CLIPFORGE_MAX_LABELS": "256",
        "CLIPFORGE_MAX_BATCH_SIZE": str(max_batch),
    }
    if decode_processes is not None:
        env["CLIPFORGE_DECODE_PROCESSES"] = str(decode_processes)
    extra: list[str] = []
    if workers > 1:  # as `clipforge serve --workers` runs them: one metrics directory, cores shared out
        env["CLIPFORGE_WORKERS"] = str(workers)
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="clipforge-bench-metrics-")
        extra = ["--workers", str(workers)]
    if index is not None:
        env["CLIPFORGE_INDEX"] = str(index)
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "clipforge.service.app:create_app",
        "--factory",
        "--host",
        HOST,
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        *extra,
    ]
    proc = subprocess.Popen(cmd, env=env, cwd=Path(__file__).resolve().parents[1])
    _metrics_dirs[proc.pid] = env["PROMETHEUS_MULTIPROC_DIR"] if workers > 1 else None  # made above
    deadline = time.monotonic() + 300
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


_metrics_dirs: dict[int, str | None] = {}  # server pid -> its multiprocess metrics directory, removed on stop


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=60)
    metrics_dir = _metrics_dirs.pop(proc.pid, None)
    if metrics_dir:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def server_stack() -> str:
    import importlib.util

    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    threads = os.environ.get("CLIPFORGE_TORCH_THREADS", "default")
    return f"uvicorn ({loop} loop, {http} parser), server torch threads: {threads}"


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


Variant = tuple[int | None, int]  # (decode processes, workers) of one server


def variants(a: argparse.Namespace) -> list[Variant]:
    return [(dp, w) for w in a.workers for dp in a.decode_processes]


def throughput(arch: str, bundle: Path, batch: int, images: list[bytes], a: argparse.Namespace) -> dict[str, Any]:
    """Offline limit vs served embed at each client level, alternating; then single-request latency. With
    several --decode-processes values, one server per value, measured in turn within each round."""
    embeds = [post("/v1/embed", {"images": [base64.b64encode(im).decode()]}) for im in images]  # pre-built
    embed = lambda: random.choice(embeds)  # noqa: E731
    off = Offline(bundle, images[0], batch)
    single_ms = statistics.median(off.single_ms(repeats=5))
    # long enough for the slowest level to complete ~10 batches: 64 clients wait for 64 images each round
    per_batch = off.measure(0)["rate"]
    seconds = max(a.seconds, min(a.max_seconds, 10 * batch / per_batch))
    servers: dict[Variant, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for dp, w in variants(a):
            server = start_server(bundle, None, port := free_port(), max_batch=batch, decode_processes=dp, workers=w)
            servers[dp, w] = (server, port)
            run_loop(load(port, 4, 1.0, embed))  # warm the server up
        limits: dict[int, Any] = {}
        served: dict[Variant, dict[int, Any]] = {dp: {} for dp in servers}
        for c in LEVELS:  # offline and served alternate, twice, so load from other jobs hits both alike
            offs, serves = [], {dp: [] for dp in servers}
            for i in range(2):
                offs.append(off.measure(seconds / 4))
                warmup = min(5.0, seconds / 3) if i == 0 else min(2.0, seconds / 6)
                for dp, (server, port) in servers.items():
                    serves[dp].append(run_loop(load(port, c, seconds / 2, embed, warmup=warmup, pid=server.pid)))
            limits[c] = combine_offline(offs)
            for dp in servers:
                served[dp][c] = combine(serves[dp])
        # one request at a time, model alone vs served, alternating in rounds; medians of each
        model_ms, k = [], max(3, min(20, int(1000 / single_ms)))
        served_ms: dict[Variant, list[float]] = {dp: [] for dp in servers}
        for _ in range(4):
            model_ms += off.single_ms(repeats=k)
            for dp, (_, port) in servers.items():
                served_ms[dp] += run_loop(served_single_ms(port, embeds[0], k))
        single_ms = statistics.median(model_ms)
        for dp in servers:
            served[dp][0] = statistics.median(served_ms[dp])
        curve = batch_curve(off, [b for b in (8, 16, 32) if b < batch] + [batch])
    finally:
        for server, _ in servers.values():
            stop_server(server)
    return {
        "arch": arch,
        "limits": limits,
        "served": served,
        "single_ms": single_ms,
        "seconds": seconds,
        "batch": batch,
        "curve": curve,
    }


def batch_curve(off: Offline, sizes: list[int], rounds: int = 2) -> dict[int, float]:
    """The offline rate at smaller batches (best of `rounds`, sizes alternating): with c clients in a closed
    loop the server's batches hold at most c images, so at 16 clients the encoder runs batches of <= 16."""
    full = off.batch
    rates: dict[int, float] = {b: 0.0 for b in sizes}
    try:
        for _ in range(rounds):
            for b in sizes:
                off.batch = b
                rates[b] = max(rates[b], off.measure(1.0)["rate"])
    finally:
        off.batch = full
    return rates


def print_throughput(r: dict[str, Any], image_bytes: int) -> list[tuple[str, str, str, bool]]:
    limits = r["limits"]
    rows = []
    print(
        f"\n[{r['arch']}] image embed, one {image_bytes}-byte JPEG per request, {r['seconds']:.0f} s per level; "
        f"offline = decode+preprocess+encode in batches of {r['batch']} (= the server's max batch), "
        "measured just before each served level"
    )
    for (dp, w), served in r["served"].items():
        name = f"decode processes {dp}" if dp is not None else "decode processes: the server's default"
        name += f", {w} workers" if w > 1 else ""
        tag = f"[{r['arch']}, {name}]" if len(r["served"]) > 1 else f"[{r['arch']}]"
        print(f"-- server with {name}")
        print(
            f"{'clients':>8} {'offline/s':>10} {'served/s':>9} {'ratio':>7} {'p50 ms':>9} {'p99 ms':>9} "
            f"{'errors':>7}  {'CPU ms/img: offline':>19} {'server':>7} {'client':>7}  {'cores: server':>13} "
            f"{'client':>7}"
        )
        for c in LEVELS:
            o, s = limits[c], served[c]
            print(
                f"{c:>8} {o['rate']:>10.1f} {s['rps']:>9.1f} {s['rps'] / o['rate']:>6.2f}x {s['p50']:>9.2f} "
                f"{s['p99']:>9.2f} {s['errors']:>7}  {o['cpu_ms']:>19.2f} {s['server_ms']:>7.2f} "
                f"{s['client_ms']:>7.2f}  {s['server_cores']:>13.2f} {s['client_cores']:>7.2f}"
            )
        for c in LEVELS:
            s = served[c]
            print(
                f"  {c:>2} clients: offline CPU per image / (server + client CPU per request) = "
                f"{limits[c]['cpu_ms'] / (s['server_ms'] + s['client_ms']):.2f}x (the ratio if both were CPU-bound)"
            )
        overhead = served[0] - r["single_ms"]
        curve, top = r["curve"], r["curve"][r["batch"]]
        print(
            "offline rate by batch size (c clients form batches of <= c): "
            + ", ".join(f"{b}: {v:.0f}/s ({v / top:.2f} of batch {r['batch']})" for b, v in curve.items())
        )
        print(
            f"single request, one at a time, alternating: model time (decode+preprocess+encode of 1 image) p50 "
            f"{r['single_ms']:.2f} ms, served p50 {served[0]:.2f} ms"
        )
        ratio16, ratio64 = served[16]["rps"] / limits[16]["rate"], served[64]["rps"] / limits[64]["rate"]
        rows += [
            (f"{tag} served / offline at 16 clients", f"{ratio16:.2f}x", ">= 0.8x", ratio16 >= 0.8),
            (f"{tag} served / offline at 64 clients", f"{ratio64:.2f}x", ">= 0.8x", ratio64 >= 0.8),
            (f"{tag} single-request p50 overhead", f"{overhead:.2f} ms", "<= 10 ms", overhead <= 10),
        ]
    print(
        "CPU ms/img: CPU time spent per image (offline: this process; server: the uvicorn process and its "
        "decode workers, all threads; client: the load generator); cores: CPU seconds per second"
    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", help="a bundle directory (default: a random-init bundle of each --arch)")
    ap.add_argument(
        "--arch", default="cf-tiny-vit,ViT-B-32", help="comma-separated architectures of random-init bundles"
    )
    ap.add_argument("--seconds", type=float, default=6.0, help="least measurement time per served load level")
    ap.add_argument("--soak", type=float, default=60.0, help="soak duration in seconds (32 clients); 0 skips it")
    ap.add_argument(
        "--batch", default="64,8", help="offline batch size = the server's max batch; comma-separated per arch"
    )
    ap.add_argument("--max-seconds", type=float, default=40.0, help="most measurement time per served load level")
    ap.add_argument(
        "--decode-processes",
        default="",
        help="the servers' CLIPFORGE_DECODE_PROCESSES; comma-separated values (e.g. 0,1) run one server each, "
        "measured in turn within each round (default: the server's own default)",
    )
    ap.add_argument(
        "--workers",
        default="1",
        help="the servers' worker processes (uvicorn workers, as `clipforge serve --workers`); "
        "comma-separated values run one server each, like --decode-processes",
    )
    a = ap.parse_args()
    a.decode_processes = [int(x) for x in a.decode_processes.split(",")] if a.decode_processes else [None]
    a.workers = [int(x) for x in a.workers.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="clipforge-bench-"))
    archs = ["given"] if a.bundle else a.arch.split(",")
    bundles = [Path(a.bundle)] if a.bundle else [make_bundle(arch, tmp / arch / "bundle") for arch in archs]
    images = [jpeg((random.randrange(256), 40, 200)) for _ in range(16)]
    b64s = [base64.b64encode(im).decode() for im in images]
    print(f"bundles: {', '.join(f'{x} ({b})' for x, b in zip(archs, bundles, strict=True))}")
    print(f"server: {server_stack()}; {os.cpu_count()} CPUs; load generator in this process")

    batches = [int(x) for x in a.batch.split(",")]
    batches += batches[-1:] * (len(archs) - len(batches))
    runs = [throughput(*run, images=images, a=a) for run in zip(archs, bundles, batches, strict=False)]

    # classify and the soak, with the first bundle and an index
    index = make_index(bundles[0], tmp / "index" / "idx")
    server = start_server(
        bundles[0], index, port := free_port(), decode_processes=a.decode_processes[-1], workers=a.workers[-1]
    )
    try:
        uncached, cached = run_loop(classify_latency(port, b64s[0], n=7))

        def mix() -> bytes:
            r = random.random()
            if r < 0.4:
                return post("/v1/embed", {"images": [random.choice(b64s)]})
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
            out = await load(port, 32, a.soak, mix, warmup=0.0, pid=server.pid)
            sampler.cancel()
            return out

        soaked = run_loop(soak()) if a.soak > 0 else None
        alive = server.poll() is None and run_loop(load(port, 1, 0.2, lambda: get("/readyz"), 0))["errors"] == 0
    finally:
        stop_server(server)
        shutil.rmtree(tmp, ignore_errors=True)  # two bundles and shards: ~600 MB

    # --- report ---
    rows = []
    for r in runs:
        rows += print_throughput(r, len(images[0]))
    rows.append(
        (
            f"[{archs[0]}] 100-label classify uncached / cached p50",
            f"{uncached:.1f} / {cached:.1f} ms = {uncached / cached:.1f}x",
            ">= 5x",
            uncached / cached >= 5,
        )
    )
    if soaked is not None:
        half = rss[len(rss) // 2 :]
        growth = max(half) - half[0] if half else 0.0
        bounded = growth < max(20.0, 0.05 * half[0])
        rows += [
            (
                f"soak {a.soak:.0f} s x 32 clients: requests, errors",
                f"{soaked['n']} req, {soaked['errors']} errors",
                "0 errors",
                soaked["errors"] == 0 and alive,
            ),
            (
                "soak server (+ decode workers) RSS start / peak / end",
                f"{rss[0]:.0f} / {max(rss):.0f} / {rss[-1]:.0f} MB",
                "bounded",
                bounded,
            ),
        ]
    print(f"\n{'check':<56} {'measured':<34} {'target':<10} result")
    for name, got, target, ok in rows:
        print(f"{name:<56} {got:<34} {target:<10} {'PASS' if ok else 'FAIL'}")
    if soaked is not None:
        print(
            f"(soak p50 {soaked['p50']:.1f} ms, p99 {soaked['p99']:.1f} ms; RSS growth over the second half "
            f"{growth:.1f} MB)"
        )


if __name__ == "__main__":
    main()
