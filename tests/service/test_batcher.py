"""The micro-batcher and the label cache, without HTTP: batching across callers, order, failures."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from clipforge.service.batcher import MicroBatcher
from clipforge.service.engine import LabelCache
from tests.service.conftest import run_async


def _encode(items: list[float]) -> np.ndarray:
    time.sleep(0.01)  # a model call takes a while, so callers pile up behind it
    return np.array([[x, -x] for x in items], dtype=np.float32)


def test_concurrent_callers_share_batches_and_get_their_own_rows() -> None:
    batches: list[int] = []
    threads: set[str] = set()

    def encode(items: list[float]) -> np.ndarray:
        threads.add(threading.current_thread().name)
        return _encode(items)

    async def main() -> list[np.ndarray]:
        b = MicroBatcher({"text": encode}, max_batch=8, max_wait_s=0.005, on_batch=lambda k, n, s: batches.append(n))
        b.start()
        try:
            return await asyncio.gather(*(b.encode("text", [float(i), i + 0.5]) for i in range(20)))
        finally:
            await b.stop()

    results = run_async(main())
    for i, rows in enumerate(results):  # every caller gets exactly its rows, in order
        np.testing.assert_array_equal(rows, [[i, -i], [i + 0.5, -(i + 0.5)]])
    assert sum(batches) == 40
    assert max(batches) <= 8
    assert len(batches) <= 6, batches  # 40 items in batches of <= 8, not 20 single calls
    assert len(threads) == 1 and threads != {threading.main_thread().name}  # one inference thread, off the loop


def test_lone_request_waits_at_most_max_wait() -> None:
    async def main() -> float:
        b = MicroBatcher({"text": lambda xs: np.zeros((len(xs), 2), np.float32)}, max_batch=64, max_wait_s=0.002)
        b.start()
        try:
            await b.encode("text", [1.0])  # warm the thread
            t0 = time.perf_counter()
            await b.encode("text", [1.0])
            return time.perf_counter() - t0
        finally:
            await b.stop()

    assert run_async(main()) < 0.05


def test_encoder_failure_reaches_the_callers_and_the_batcher_keeps_going() -> None:
    def flaky(items: list[float]) -> np.ndarray:
        if any(x < 0 for x in items):
            raise RuntimeError("boom")
        return _encode(items)

    async def main() -> np.ndarray:
        b = MicroBatcher({"text": flaky}, max_batch=4, max_wait_s=0.0)
        b.start()
        try:
            with pytest.raises(RuntimeError, match="boom"):
                await b.encode("text", [-1.0])
            return await b.encode("text", [2.0])
        finally:
            await b.stop()

    np.testing.assert_array_equal(run_async(main()), [[2.0, -2.0]])


def test_kinds_are_batched_separately_and_stop_fails_pending() -> None:
    seen: list[tuple[str, int]] = []

    async def main() -> None:
        b = MicroBatcher(
            {"text": _encode, "image": _encode},
            max_batch=16,
            max_wait_s=0.01,
            on_batch=lambda k, n, s: seen.append((k, n)),
        )
        b.start()
        await asyncio.gather(b.encode("text", [1.0, 2.0]), b.encode("image", [3.0]), b.encode("text", [4.0]))
        assert b.queue_depth() == 0
        await b.stop()
        with pytest.raises(RuntimeError, match="not running"):
            await b.encode("text", [1.0])

    run_async(main())
    assert sorted(seen) == [("image", 1), ("text", 3)]


def test_label_cache_is_lru_and_single_flight() -> None:
    calls = 0

    async def main() -> None:
        nonlocal calls
        cache = LabelCache(capacity=2)

        def compute(value: float):
            async def run() -> np.ndarray:
                nonlocal calls
                calls += 1
                await asyncio.sleep(0.01)
                return np.full((1, 2), value)

            return run

        key = ("fp", ("a",), ("{}",))
        (v1, c1), (v2, c2) = await asyncio.gather(
            cache.get_or_compute(key, compute(1)), cache.get_or_compute(key, compute(9))
        )
        assert calls == 1 and not c1 and c2 and v2[0, 0] == 1  # the second waiter shared the first computation
        await cache.get_or_compute(("fp", ("b",), ("{}",)), compute(2))
        await cache.get_or_compute(("fp", ("c",), ("{}",)), compute(3))  # evicts ("a",)
        _, cached = await cache.get_or_compute(key, compute(4))
        assert not cached and calls == 4 and len(cache) == 2

    run_async(main())


def test_label_cache_computation_survives_a_cancelled_requester() -> None:
    async def main() -> None:
        cache = LabelCache(capacity=4)
        key = ("fp", ("a",), ("{}",))

        async def slow() -> np.ndarray:
            await asyncio.sleep(0.05)
            return np.ones((1, 2))

        first = asyncio.ensure_future(cache.get_or_compute(key, slow))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(cache.get_or_compute(key, slow))
        await asyncio.sleep(0.01)
        first.cancel()  # the client that started the computation went away
        value, cached = await second
        assert cached and value[0, 0] == 1 and len(cache) == 1
        assert first.cancelled()

    run_async(main())


def test_prepare_failures_fail_only_their_own_items() -> None:
    encoded: list[float] = []

    def prepare(items: list[float]) -> list[object]:
        return [ValueError(f"bad item {x}") if x < 0 else x * 10 for x in items]

    def encode(items: list[float]) -> np.ndarray:
        encoded.extend(items)
        return _encode(items)

    async def main() -> tuple[BaseException | None, np.ndarray, np.ndarray]:
        b = MicroBatcher({"image": encode}, prepare={"image": prepare}, max_batch=8, max_wait_s=0.005)
        b.start()
        try:
            mixed, good, after = await asyncio.gather(
                b.encode("image", [1.0, -2.0, -3.0]),
                b.encode("image", [4.0]),
                b.encode("image", [5.0]),
                return_exceptions=True,
            )
            assert b.queue_depth() == 0
            return mixed, good, after  # type: ignore[return-value]
        finally:
            await b.stop()

    mixed, good, after = run_async(main())
    assert isinstance(mixed, ValueError) and str(mixed) == "bad item -2.0"  # the first failure, in request order
    np.testing.assert_array_equal(good, [[40.0, -40.0]])  # encoded from the prepared item
    np.testing.assert_array_equal(after, [[50.0, -50.0]])
    assert -20.0 not in encoded and -30.0 not in encoded and sorted(encoded) == [10.0, 40.0, 50.0]


def test_prepare_runs_on_its_own_thread_while_the_encoder_works() -> None:
    spans: dict[str, list[tuple[float, float]]] = {"prepare": [], "encode": []}
    threads: dict[str, set[str]] = {"prepare": set(), "encode": set()}

    def timed(stage: str, fn):  # type: ignore[no-untyped-def]
        def run(items: list[float]):  # type: ignore[no-untyped-def]
            threads[stage].add(threading.current_thread().name)
            t0 = time.perf_counter()
            time.sleep(0.02)
            out = fn(items)
            spans[stage].append((t0, time.perf_counter()))
            return out

        return run

    async def main() -> None:
        b = MicroBatcher(
            {"image": timed("encode", lambda xs: np.array([[x, -x] for x in xs], np.float32))},
            prepare={"image": timed("prepare", lambda xs: list(xs))},
            max_batch=4,
            max_wait_s=0.0,
        )
        b.start()
        try:
            await asyncio.gather(*(b.encode("image", [float(i)]) for i in range(16)))
        finally:
            await b.stop()

    run_async(main())
    assert len(threads["prepare"]) == 1 and threads["prepare"].isdisjoint(threads["encode"])
    # some chunk was being prepared while an earlier batch was being encoded: the two stages overlap
    assert any(p0 < e1 and e0 < p1 for p0, p1 in spans["prepare"] for e0, e1 in spans["encode"]), spans


def test_stop_fails_items_on_the_prepare_thread_and_in_the_encoder() -> None:
    def slow(items: list[float]) -> list[float]:
        time.sleep(0.05)
        return list(items)

    async def main() -> None:
        b = MicroBatcher(
            {"image": _encode, "text": lambda xs: _encode([time.sleep(0.05) or x for x in xs])},
            prepare={"image": slow},
            max_wait_s=0.0,
        )
        b.start()
        preparing = asyncio.ensure_future(b.encode("image", [1.0]))
        encoding = asyncio.ensure_future(b.encode("text", [2.0]))
        await asyncio.sleep(0.02)  # both are now on a thread
        await b.stop()
        for job in (preparing, encoding):  # answered, not left hanging
            with pytest.raises(RuntimeError, match="shutting down"):
                await asyncio.wait_for(job, 1.0)

    run_async(main())
