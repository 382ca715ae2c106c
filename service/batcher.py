"""Dynamic micro-batching: concurrent requests' texts and images are encoded together.

Each request submits its items (strings, or preprocessed image tensors) and awaits one future per item.
A single collector task takes items of one kind, waits up to `max_wait` for more (or until `max_batch`
are queued), and runs the encoder on the one inference thread, off the event loop. While that batch runs,
new requests queue up, so batches grow with load and a lone request pays at most `max_wait`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

EncodeFn = Callable[[list[Any]], np.ndarray]  # N items -> [N, D] float32
KINDS = ("text", "image")


@dataclass
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
        max_batch: int = 64,
        max_wait_s: float = 0.002,
        on_batch: Callable[[str, int, float], None] | None = None,
    ) -> None:
        self._encoders = encoders
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._queues: dict[str, deque[_Pending]] = {k: deque() for k in encoders}
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    # --- lifecycle (called from the app's lifespan, inside the running loop) ---
    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipforge-infer")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="clipforge-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for q in self._queues.values():
            while q:
                p = q.popleft()
                if not p.future.done():
                    p.future.set_exception(RuntimeError("service is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def queue_depth(self, kind: str | None = None) -> int:
        return sum(len(q) for k, q in self._queues.items() if kind in (None, k))

    # --- request side ---
    async def encode(self, kind: str, items: Sequence[Any]) -> np.ndarray:
        """Encode `items` of one kind; returns [len(items), D] float32 in order."""
        if not self.running or self._wakeup is None:
            raise RuntimeError("the micro-batcher is not running")
        if not items:
            raise ValueError("nothing to encode")
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        pending = [_Pending(it, loop.create_future(), now) for it in items]
        self._queues[kind].extend(pending)
        self._wakeup.set()
        rows = await asyncio.gather(*(p.future for p in pending))
        return np.stack(rows)

    # --- collector side ---
    def _oldest_kind(self) -> str | None:
        heads = [(q[0].t_enqueued, k) for k, q in self._queues.items() if q]
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
            queue = self._queues[kind]
            deadline = queue[0].t_enqueued + self.max_wait_s
            while len(queue) < self.max_batch and (left := deadline - time.perf_counter()) > 0:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), left)
            batch = [queue.popleft() for _ in range(min(self.max_batch, len(queue)))]
            batch = [p for p in batch if not p.future.cancelled()]  # client went away
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                out = await loop.run_in_executor(self._executor, self._encoders[kind], [p.item for p in batch])
            except Exception as exn:  # hand the failure to every waiting request, keep serving
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exn)
                continue
            if self._on_batch is not None:
                self._on_batch(kind, len(batch), time.perf_counter() - t0)
            for p, row in zip(batch, out, strict=True):
                if not p.future.done():
                    p.future.set_result(row)
