"""Image decode + preprocess for the service: in this process, or in worker processes outside its GIL.

Decoding untrusted bytes is the service's biggest per-image CPU cost after HTTP itself, and most of it holds
the GIL, which the event loop and the encoder thread need. `DecodePool` runs it in worker processes instead:

- workers come from the 'forkserver' context: a clean server process (no torch/OpenMP threads) that has
  imported this module once and forks each worker, so a replacement worker starts in milliseconds. Forking
  the server itself, with its inference threads running, would be unsafe.
- a worker holds no model: only an `ImagePrep` for the bundle's preprocess settings and the same pixel
  limit (a decompression bomb is refused there).
- a worker sends back uint8 [H, W, 3] pixels (4x fewer bytes than float32); `ImagePrep.batch` converts and
  normalises a whole batch on the encoder thread with the ops ToTensor + Normalize use, so the pixels are
  the same to the bit as `bundle.preprocess` gives (encoders/pixels.py: the index prepares images the same way).
- a worker that dies (a codec segfault, the OOM killer) fails nothing by itself: the pool is replaced and
  the images it held are retried one per job, so only an image that kills a worker again fails, and only
  its own request (422 image_decode_failed).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from clipforge.encoders import pixels
from clipforge.encoders.images import ImageDecodeError
from clipforge.encoders.pixels import Prepared
from clipforge.service.errors import APIError

log = logging.getLogger("clipforge.service")
Failure = tuple[int, str, str]  # (HTTP status, error code, message): picklable, unlike the exceptions
ChunkFn = Callable[[list[bytes]], list["Prepared | Failure"]]
CRASHED: Failure = (422, "image_decode_failed", "decoding this image crashed the decoder")


class ImagePrep(pixels.ImagePrep):
    """`encoders.pixels.ImagePrep` with the service's per-image failures."""

    def chunk(self, blobs: list[bytes]) -> list[Prepared | Failure]:
        out: list[Prepared | Failure] = []
        for blob in blobs:
            try:
                out.append(self(blob))
            except Exception as exn:
                out.append(failure(exn))
        return out


def failure(exn: Exception) -> Failure:
    """The HTTP status, code and message for an image that failed to decode."""
    if isinstance(exn, ImageDecodeError):
        status, code = {"too_large": (413, "image_too_large"), "empty": (400, "empty_image")}.get(
            exn.reason, (400, "invalid_image")
        )
        return status, code, str(exn)
    return 400, "invalid_image", f"cannot decode ({type(exn).__name__})"  # still the upload's fault


def api_error(f: Failure, i: int) -> APIError:
    return APIError(f[0], f[1], f"image {i}: {f[2]}")


# --- in a worker process (its own interpreter, so a module global is per worker, not app state) ---
_worker_prep: ImagePrep | None = None


def _init_worker(preprocess: dict[str, Any], max_pixels: int) -> None:
    global _worker_prep
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the server shuts us down
    import torch

    torch.set_num_threads(1)  # no intra-op pool fighting the encoder, should a step use torch
    _worker_prep = ImagePrep(preprocess, max_pixels)


def decode_chunk(blobs: list[bytes]) -> list[Prepared | Failure]:
    assert _worker_prep is not None, "not in a decode worker"
    return _worker_prep.chunk(blobs)


def _ping() -> int:
    import os

    return os.getpid()


class DecodePool:
    """`processes` decode workers. `decode` is blocking and thread-safe: call it from the prepare thread."""

    def __init__(
        self, preprocess: dict[str, Any], max_pixels: int, processes: int, chunk_fn: ChunkFn = decode_chunk
    ) -> None:
        if processes < 1:
            raise ValueError("a decode pool needs at least one process")
        self.processes = processes
        self.restarts = 0
        self._args = (dict(preprocess), max_pixels)
        self._chunk_fn = chunk_fn
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False

    def start(self, timeout: float = 300.0) -> None:
        """Start the workers and wait until each answers (slow: the first worker imports torch); raises if
        they cannot start, so a broken environment fails at start-up, not on the first image."""
        pool = self._current()
        for f in [pool.submit(_ping) for _ in range(self.processes)]:
            f.result(timeout)

    def pids(self) -> list[int]:
        pool = self._pool
        procs = getattr(pool, "_processes", None) or {}
        return [p.pid for p in procs.values() if p.pid and p.is_alive()]

    def _new_pool(self) -> ProcessPoolExecutor:
        ctx = multiprocessing.get_context("forkserver")
        # the fork server imports this module (not the server's __main__) once; workers fork from it
        ctx.set_forkserver_preload(["clipforge.service.decode"])
        return ProcessPoolExecutor(self.processes, mp_context=ctx, initializer=_init_worker, initargs=self._args)

    def _current(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("service is shutting down")
            if self._pool is None:
                self._pool = self._new_pool()
            return self._pool

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:  # the first thread to see it broken replaces it
                self._pool = None
                self.restarts += 1
                broken.shutdown(wait=False, cancel_futures=True)
                log.warning("an image decode worker died; starting a new one (restart %d)", self.restarts)

    def decode(self, blobs: list[bytes]) -> list[Prepared | Failure]:
        """One result per blob, in order: prepared pixels or a Failure. Raises only when shutting down."""
        if not blobs:
            return []
        pool = self._current()
        parts = [idx for idx in np.array_split(np.arange(len(blobs)), min(self.processes, len(blobs))) if len(idx)]
        jobs = [(idx, self._submit(pool, [blobs[i] for i in idx])) for idx in parts]  # one part per worker
        out: list[Prepared | Failure] = [None] * len(blobs)
        lost: list[int] = []
        for idx, job in jobs:
            try:
                if job is None:
                    raise BrokenProcessPool
                for i, res in zip(idx, job.result(), strict=True):
                    out[i] = res
            except (BrokenProcessPool, CancelledError):  # a worker died: which image did it is unknown,
                self._replace(pool)
                lost += list(idx)  # so retry them one by one
        for i in lost:
            out[i] = self._alone(blobs[i])
        return out

    def _submit(self, pool: ProcessPoolExecutor, blobs: list[bytes]) -> Future[list[Prepared | Failure]] | None:
        try:
            return pool.submit(self._chunk_fn, blobs)
        except (BrokenProcessPool, RuntimeError):  # broken, or shut down by a thread that saw it broken
            self._replace(pool)
            return None

    def _alone(self, blob: bytes, tries: int = 2) -> Prepared | Failure:
        """Decode one image in its own job. CRASHED when it takes a worker down `tries` times: once could be
        another image's fault (with several workers or prepare threads) or the OOM killer's."""
        crashes = 0
        for _ in range(2 * tries):
            pool = self._current()  # raises when shutting down
            job = self._submit(pool, [blob])
            if job is None:  # someone else broke that pool; try the next one
                continue
            try:
                return job.result()[0]
            except (BrokenProcessPool, CancelledError):
                self._replace(pool)
                crashes += 1
                if crashes == tries:
                    break
        return CRASHED

    def close(self) -> None:
        """Stop the workers now; a blocked `decode` call raises "shutting down" instead of waiting."""
        with self._lock:
            self._closed, pool, self._pool = True, self._pool, None
        if pool is None:
            return
        procs = list((getattr(pool, "_processes", None) or {}).values())  # 3.11 has no terminate_workers()
        pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(5)
        pool.shutdown(wait=True)  # the workers are gone: this joins the pool's thread and frees its queues
