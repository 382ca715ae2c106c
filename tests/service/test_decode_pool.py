"""Image decoding in worker processes: the same pixels as in-process, the same errors, and a worker that
dies (a codec segfault, a kill) fails at most the image that killed it; the server keeps serving."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from clipforge.encoders.pixels import to_batch
from clipforge.service.decode import CRASHED, DecodePool, ImagePrep, decode_chunk
from clipforge.service.engine import Engine
from clipforge.service.errors import APIError
from clipforge.service.settings import Settings
from tests.service.conftest import AppFactory, run_async
from tests.service.fakes import png_bytes

CRASH = b"CRASH"  # the "image" that segfaults the codec


def crashy_chunk(blobs: list[bytes]) -> list[Any]:
    """decode_chunk, except that CRASH kills the worker the way a segfault in a codec would."""
    if CRASH in blobs:
        os.kill(os.getpid(), signal.SIGSEGV)
    return decode_chunk(blobs)


def slow_chunk(blobs: list[bytes]) -> list[Any]:
    time.sleep(30)
    return decode_chunk(blobs)


def encoded(mode: str, size: tuple[int, int], fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8).squeeze()
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format=fmt)
    return buf.getvalue()


IMAGES = [
    encoded("RGB", (97, 61), "JPEG", 0),
    encoded("RGB", (600, 320), "JPEG", 1),  # decoded at reduced scale (JPEG draft mode)
    encoded("RGBA", (40, 90), "PNG", 2),  # alpha flattened
    encoded("L", (33, 33), "PNG", 3),
    encoded("RGB", (64, 48), "WEBP", 4),
]


@pytest.fixture(scope="module")
def prep(bundle: Any) -> ImagePrep:
    return ImagePrep(bundle.meta["preprocess"], 200_000)


@pytest.fixture(scope="module")
def pool(bundle: Any) -> Any:
    p = DecodePool(bundle.meta["preprocess"], 200_000, processes=1, chunk_fn=crashy_chunk)
    p.start()
    yield p
    p.close()


def test_pool_pixels_are_bit_identical_to_in_process_decode(bundle: Any, prep: ImagePrep, pool: DecodePool) -> None:
    got = pool.decode(IMAGES)
    assert all(isinstance(px, np.ndarray) and px.dtype == np.uint8 for px in got)  # 4x fewer bytes than float
    for a, b in zip(got, prep.chunk(IMAGES), strict=True):
        np.testing.assert_array_equal(a, b)
    # and, normalised as a batch, the very pixels the bundle's own transform gives for each image alone
    reference = torch.stack([bundle.preprocess([bundle.load_image(b, max_pixels=200_000)])[0] for b in IMAGES])
    batch = to_batch(got, prep.normalize)
    assert batch.dtype == torch.float32 and torch.equal(batch, reference)


def test_pool_refuses_bad_images_and_bombs_with_the_in_process_errors(prep: ImagePrep, pool: DecodePool) -> None:
    bomb = encoded("L", (1000, 1000), "PNG", 5)  # 1e6 pixels > the limit of 200_000, refused in the worker
    bad = [b"", b"not an image", IMAGES[0][:100], bomb]
    got = pool.decode(bad)
    assert got == prep.chunk(bad)
    assert pool.decode([]) == []
    assert [f[:2] for f in got] == [
        (400, "empty_image"),
        (400, "invalid_image"),
        (400, "invalid_image"),
        (413, "image_too_large"),
    ]


def test_a_crashing_image_fails_alone_and_the_pool_comes_back(pool: DecodePool) -> None:
    before, restarts = pool.pids(), pool.restarts
    got = pool.decode([IMAGES[0], CRASH, IMAGES[3]])
    assert got[1] == CRASHED and CRASHED[:2] == (422, "image_decode_failed")
    assert isinstance(got[0], np.ndarray) and isinstance(got[2], np.ndarray)  # retried, one by one
    assert pool.restarts > restarts and pool.pids() != before
    assert all(isinstance(px, np.ndarray) for px in pool.decode(IMAGES))  # later images decode again


def test_a_worker_killed_mid_chunk_loses_no_request(pool: DecodePool) -> None:
    results: list[Any] = []
    restarts = pool.restarts
    worker = threading.Thread(target=lambda: results.extend(pool.decode(IMAGES * 100)))
    worker.start()
    time.sleep(0.05)
    for pid in pool.pids():
        os.kill(pid, signal.SIGKILL)  # the OOM killer, say: not the images' fault, so they are retried
    worker.join(60)
    assert len(results) == 500 and all(isinstance(px, np.ndarray) for px in results)
    assert pool.restarts == restarts + 1 and len(pool.pids()) == 1


def _engine(bundle: Any, pool: DecodePool) -> Engine:
    engine = Engine(bundle, Settings(bundle=Path(bundle.path), max_wait_ms=1.0, max_image_pixels=200_000))
    engine.decode_pool = pool
    return engine


def test_engine_fails_only_the_request_whose_image_crashed_the_decoder(bundle: Any, pool: DecodePool) -> None:
    async def main() -> list[Any]:
        engine = _engine(bundle, pool)
        engine.start()
        try:
            requests = [[IMAGES[0]], [IMAGES[1], CRASH], [IMAGES[2]], [IMAGES[3], IMAGES[4]]]
            return await asyncio.gather(*(engine.encode_images(r) for r in requests), return_exceptions=True)
        finally:
            engine.decode_pool = None  # the module's pool outlives this engine
            await engine.stop()

    a, b, c, d = run_async(main())
    assert isinstance(b, APIError) and (b.status, b.code) == (422, "image_decode_failed") and "image 1" in b.message
    assert [x.shape for x in (a, c, d)] == [(1, bundle.embed_dim), (1, bundle.embed_dim), (2, bundle.embed_dim)]


def test_stop_answers_a_chunk_in_the_worker_and_stops_the_workers(bundle: Any) -> None:
    pool = DecodePool(bundle.meta["preprocess"], 200_000, processes=1, chunk_fn=slow_chunk)
    pool.start()
    pids = pool.pids()

    async def main() -> float:
        engine = _engine(bundle, pool)
        engine.start()
        job = asyncio.ensure_future(engine.encode_images([IMAGES[0]]))
        await asyncio.sleep(0.2)  # the image is in the worker, which takes 30 s
        t0 = time.perf_counter()
        await engine.stop()
        with pytest.raises(RuntimeError, match="shutting down"):
            await asyncio.wait_for(job, 5.0)
        return time.perf_counter() - t0

    assert run_async(main()) < 5.0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_served_embeddings_are_identical_with_and_without_decode_processes(make_client: AppFactory) -> None:
    body = {"images": [base64.b64encode(b).decode() for b in IMAGES[:4]]}
    features = []
    for processes in (0, 1):
        app, client = make_client(decode_processes=processes)
        assert (app.state.engine.decode_pool is None) == (processes == 0)
        r = client.post("/v1/embed", json=body)
        assert r.status_code == 200, r.text
        features.append(r.json()["image_embeddings"])
    assert features[0] == features[1]


def test_served_requests_survive_a_killed_decode_worker(make_client: AppFactory) -> None:
    app, client = make_client(decode_processes=1)
    pool = app.state.engine.decode_pool
    png = {"images": [base64.b64encode(png_bytes()).decode()]}
    assert client.post("/v1/embed", json=png).status_code == 200
    for pid in pool.pids():
        os.kill(pid, signal.SIGKILL)
    for _ in range(3):
        r = client.post("/v1/embed", json=png)
        assert r.status_code == 200, r.text
    assert pool.restarts >= 1 and len(pool.pids()) == 1


def test_decode_processes_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPFORGE_DECODE_PROCESSES", "2")
    assert Settings().decode_processes == 2
    monkeypatch.delenv("CLIPFORGE_DECODE_PROCESSES")
    assert Settings().decode_processes == 0  # off unless asked for
    for bad in ("-1", "65", "two"):
        monkeypatch.setenv("CLIPFORGE_DECODE_PROCESSES", bad)
        with pytest.raises(ValidationError, match="decode_processes"):
            Settings()
