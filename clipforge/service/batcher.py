"""Dynamic micro-batching: concurrent requests' texts and images are encoded together.

Each request submits its items (strings, or raw image bytes) and awaits one future per item. Two stages
run as tasks on the event loop, each handing its CPU work to threads so the loop stays free for HTTP:

- prepare (kinds that have a `prepare` function, i.e. images): whatever has arrived is decoded and
  preprocessed as one chunk on a prepare thread. Items that fail (a corrupt upload) fail their own future
  only. This runs *while* the encoder works on the previous batch, so decoding and encoding overlap.
- encode: takes prepared items of one kind, waits up to `max_wait` from the oldest item's arrival for more
  (or until `max_batch` are ready), and runs the encoder on the one inference thread. While that batch
  runs, new requests queue up, so batches grow with load and a lone request pays at most `max_wait`.

Two threads hop per *batch*, not per request: a thread hop costs ~0.1 ms of CPU, as much as a small
encoder spends on an image.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

EncodeFn = Callable[[list[Any]], np.ndarray]  # N prepared items -> [N, D] float32
PrepareFn = Callable[[list[Any]], list[Any]]  # N raw items -> N prepared items, an Exception in place of a bad one


@dataclass(eq=False)  # hashed by identity
class _Pending:
    item: Any
    future: asyncio.Future[np.ndarray]
    t_enqueued: float


class MicroBatcher:
    """Gathers encoder calls across requests into batches of at most `max_batch` items per kind."""

    def __init__(
        self,
        encoders: dict[str, EncodeFn],
        *,
        prepare: dict[str, PrepareFn] | None = None,
        prepare_threads: int = 1,
        max_batch: int = 64,
        max_wait_s: float = 0.002,
        on_batch: Callable[[str, int, float], None] | None = None,
    ) -> None:
        self._encoders = encoders
        self._prepare = prepare or {}
        self.prepare_threads = max(1, prepare_threads)
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._raw: dict[str, deque[_Pending]] = {k: deque() for k in self._prepare}  # waiting to be prepared
        self._ready: dict[str, deque[_Pending]] = {k: deque() for k in encoders}  # waiting for the encoder
        self._preparing: set[tuple[_Pending, ...]] = set()  # chunks on the prepare threads
        self._prepare_wakeup: asyncio.Event | None = None
        self._wakeup: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._executor: ThreadPoolExecutor | None = None
        self._prepare_executor: ThreadPoolExecutor | None = None

    # --- lifecycle (called from the app's lifespan, inside the running loop) ---
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._wakeup, self._prepare_wakeup = asyncio.Event(), asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipforge-infer")
        self._tasks = [loop.create_task(self._run(), name="clipforge-batcher")]
        if self._prepare:
            self._prepare_executor = ThreadPoolExecutor(self.prepare_threads, thread_name_prefix="clipforge-prepare")
            self._tasks.append(loop.create_task(self._run_prepare(), name="clipforge-prepare"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        stranded = [p for q in (*self._raw.values(), *self._ready.values()) for p in q]
        stranded += [p for chunk in self._preparing for p in chunk]
        for q in (*self._raw.values(), *self._ready.values()):
            q.clear()
        self._preparing.clear()
        _fail(stranded, RuntimeError("service is shutting down"))
        for ex in (self._prepare_executor, self._executor):
            if ex is not None:
                ex.shutdown(wait=True)
        self._executor = self._prepare_executor = None

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not any(t.done() for t in self._tasks)

    def queue_depth(self, kind: str | None = None) -> int:
        queues = [*self._raw.items(), *self._ready.items()]
        return sum(len(q) for k, q in queues if kind in (None, k))

    # --- request side ---
    async def encode(self, kind: str, items: Sequence[Any]) -> np.ndarray:
        """Encode `items` of one kind; returns [len(items), D] float32 in order. When several items fail
        (in `prepare` or in the encoder), the first one's exception is raised."""
        if not self.running or self._wakeup is None or self._prepare_wakeup is None:
            raise RuntimeError("the micro-batcher is not running")
        if not items:
            raise ValueError("nothing to encode")
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        pending = [_Pending(it, loop.create_future(), now) for it in items]
        if kind in self._prepare:
            self._raw[kind].extend(pending)
            self._prepare_wakeup.set()
        else:
            self._ready[kind].extend(pending)
            self._wakeup.set()
        # return_exceptions: every future's outcome is retrieved, and the first failure (in order) is raised
        rows = await asyncio.gather(*(p.future for p in pending), return_exceptions=True)
        for row in rows:
            if isinstance(row, BaseException):
                raise row
        return np.stack(rows)  # type: ignore[arg-type]

    # --- prepare stage ---
    async def _run_prepare(self) -> None:
        assert self._prepare_wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            kind = next((k for k, q in self._raw.items() if q), None)
            if kind is None or len(self._preparing) >= self.prepare_threads:
                self._prepare_wakeup.clear()
                await self._prepare_wakeup.wait()
                continue
            queue = self._raw[kind]
            popped = [queue.popleft() for _ in range(min(self.max_batch, len(queue)))]
            chunk = tuple(p for p in popped if not p.future.done())  # client went away
            if chunk:
                self._preparing.add(chunk)
                job = loop.run_in_executor(self._prepare_executor, self._prepare[kind], [p.item for p in chunk])
                job.add_done_callback(functools.partial(self._prepared, kind, chunk))

    def _prepared(self, kind: str, chunk: tuple[_Pending, ...], job: asyncio.Future[list[Any]]) -> None:
        assert self._wakeup is not None and self._prepare_wakeup is not None
        if chunk not in self._preparing:  # stop() has failed it already
            return
        self._preparing.discard(chunk)
        self._prepare_wakeup.set()
        if job.cancelled():
            outs: list[Any] = [RuntimeError("service is shutting down")] * len(chunk)
        elif job.exception() is not None:
            outs = [job.exception()] * len(chunk)
        else:
            outs = job.result()
        ready = self._ready[kind]
        for p, out in zip(chunk, outs, strict=True):
            if p.future.done():
                continue
            if isinstance(out, BaseException):
                p.future.set_exception(out)
            else:
                p.item = out
                ready.append(p)
        self._wakeup.set()

    # --- encode stage ---
    def _oldest_kind(self) -> str | None:
        heads = [(q[0].t_enqueued, k) for k, q in self._ready.items() if q]
        return min(heads)[1] if heads else None

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            kind = self._oldest_kind()
            if kind is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            queue = self._ready[kind]
            deadline = queue[0].t_enqueued + self.max_wait_s
            while len(queue) < self.max_batch and (left := deadline - time.perf_counter()) > 0:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), left)
            batch = [queue.popleft() for _ in range(min(self.max_batch, len(queue)))]
            batch = [p for p in batch if not p.future.done()]  # client went away
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                out = await loop.run_in_executor(self._executor, self._encoders[kind], [p.item for p in batch])
            except asyncio.CancelledError:  # stop(): nobody may be left waiting for this batch
                _fail(batch, RuntimeError("service is shutting down"))
                raise
            except Exception as exn:  # hand the failure to every waiting request, keep serving
                _fail(batch, exn)
                continue
            if self._on_batch is not None:
                self._on_batch(kind, len(batch), time.perf_counter() - t0)
            for p, row in zip(batch, out, strict=True):
                if not p.future.done():
                    p.future.set_result(row)


def _fail(pending: Sequence[_Pending], exn: BaseException) -> None:
    for p in pending:
        if not p.future.done():
            p.future.set_exception(exn)
