"""The index's error types and result records (what the service and the CLI see)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class IndexInputError(ValueError):
    """What the index refuses, with a one-line reason: a bad query (k, dimension, filter), an unknown id,
    data with nothing usable in it, a truncated or corrupt index file. `item`: which of the items given to an
    update it is about, where it is about one (a caller that knows their names can say which)."""

    def __init__(self, message: str, item: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.item, self.reason = item, reason or message


class IndexMismatchError(IndexInputError):
    """The bundle's fingerprint differs from the one the index was built with."""


class IndexUnreadableError(IndexInputError):
    """A file of the index on disk is missing, truncated, corrupt or of another format. The message names the
    file: it is for whoever runs the index (the service logs it and tells its client only that the index is
    unavailable)."""


class UnknownIdError(IndexInputError, LookupError):
    """An id the index does not hold: never added, or removed (perhaps by another writer a moment ago)."""


@dataclass
class Hit:
    """One search result. `metadata`: key, source, member or path, width, height and the extra fields."""

    id: int
    score: float
    caption: str | None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Item:
    """One indexed image with its caption and where its bytes live (a shard member or a file path)."""

    id: int
    key: str
    caption: str | None
    source: str
    member: str | None
    path: str | None
    width: int
    height: int
    extra: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "source": self.source, "width": self.width, "height": self.height}
        if self.member is not None:
            out["member"] = self.member
        if self.path is not None:
            out["path"] = self.path
        return {**self.extra, **out}
