"""The index behind one dedicated thread: FAISS and SQLite calls stay off the event loop, always on the
same thread (SQLite connections are thread-bound), and writes are serialised against reads."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("clipforge.service")


class IndexHandle:
    """Wraps an `index.Index` (or anything with its API); `await handle.run(lambda idx: idx.get(3))`."""

    def __init__(self, index: Any = None, executor: ThreadPoolExecutor | None = None) -> None:
        self.index = index
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipforge-index")

    @classmethod
    async def open(cls, path: str, bundle: Any, mmap: bool = False) -> IndexHandle:
        """Open the index on its own thread (so its SQLite connection belongs to that thread)."""
        from clipforge.index import Index

        handle = cls()
        handle.index = await handle.run_raw(lambda: Index.open(path, bundle=bundle, mmap=mmap))
        return handle

    async def run_raw(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def run(self, fn: Callable[[Any], T]) -> T:
        """`fn(index)` on the index's thread. An index that cannot be used (a file of it unreadable, or replaced
        by another bundle's) is a 503 APIError: its message, which names server paths, only goes to the log."""
        index = self.index
        try:
            return await self.run_raw(lambda: fn(index))
        except unavailable_errors() as exn:
            from clipforge.service.errors import APIError

            log.error("the index is unavailable: %s", exn)
            raise APIError(503, "index_unavailable", "the index cannot be used right now") from exn

    def close(self) -> None:
        close = getattr(self.index, "close", None)
        if callable(close):
            self._executor.submit(close).result()
        self._executor.shutdown(wait=True)


def unavailable_errors() -> tuple[type[Exception], ...]:
    """What the index raises when the fault is on the server's side, not in the request."""
    try:
        from clipforge.index import IndexMismatchError, IndexUnreadableError

        return (IndexMismatchError, IndexUnreadableError)
    except ImportError:  # the index package is optional for a model-only server
        return ()


def index_errors() -> tuple[type[Exception], ...]:
    """What the index raises for a request it refuses (imported lazily: nothing heavy at import time).

    `index.IndexInputError` covers unknown ids (`index.UnknownIdError`, also a LookupError) and bad queries alike;
    LookupError is what simpler stand-ins raise for unknown ids.
    """
    try:
        from clipforge.index import IndexInputError

        return (IndexInputError, LookupError)
    except ImportError:  # the index package is optional for a model-only server
        return (LookupError,)


async def get_item(handle: IndexHandle, item_id: int) -> Any:
    """The stored item, or a 404 APIError."""
    from clipforge.service.errors import APIError

    try:
        return await handle.run(lambda idx: idx.get(item_id))
    except index_errors() as exn:
        raise APIError(404, "not_found", f"no item with id {item_id}") from exn


async def run_query(handle: IndexHandle, fn: Callable[[Any], T]) -> T:
    """Run a search or update; the index's refusals (limits, filters, ...) become a 422 APIError, and an unknown
    id a 404: one the route looked up a moment ago may have been removed by another request since."""
    from clipforge.service.errors import APIError

    try:
        return await handle.run(fn)
    except (KeyError, IndexError):
        raise  # a bug of ours, not an unknown id: a 500
    except LookupError as exn:
        raise APIError(404, "not_found", str(exn)) from exn
    except index_errors() as exn:
        raise APIError(422, "invalid_query", str(exn)) from exn
