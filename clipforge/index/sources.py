"""Reading an indexed image's bytes back, only from where the index recorded them."""

from __future__ import annotations

import tarfile
import threading
from collections import OrderedDict
from pathlib import Path

from clipforge.index.types import IndexInputError, Item

MIME = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tif": "image/tiff",
    "tiff": "image/tiff",
}
PIL_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


def mime_for(name: str) -> str:
    return MIME.get(Path(name).suffix.lower().lstrip("."), "application/octet-stream")


class MemberReader:
    """Reads one member of a local tar shard; member offsets are cached for the last few shards."""

    def __init__(self, cache_shards: int = 8) -> None:
        self.offsets: OrderedDict[str, dict[str, tuple[int, int]]] = OrderedDict()
        self.cache_shards = cache_shards
        self.lock = threading.Lock()

    def _offsets(self, shard: str) -> dict[str, tuple[int, int]]:
        with self.lock:
            if shard in self.offsets:
                self.offsets.move_to_end(shard)
                return self.offsets[shard]
        try:
            with tarfile.open(shard, "r:*") as tf:
                table = {m.name: (m.offset_data, m.size) for m in tf if m.isfile()}
        except (OSError, tarfile.TarError) as exn:
            raise IndexInputError(f"cannot read shard {shard}: {exn}") from exn
        with self.lock:
            self.offsets[shard] = table
            while len(self.offsets) > self.cache_shards:
                self.offsets.popitem(last=False)
        return table

    def read(self, shard: str, member: str) -> bytes:
        if "://" in shard or shard.startswith("pipe:"):
            raise IndexInputError(f"the image lives in a remote shard ({shard}); only local shards can be read back")
        where = self._offsets(shard).get(member)
        if where is None:
            raise IndexInputError(f"{member} is no longer in {shard}")
        with open(shard, "rb") as f:
            f.seek(where[0])
            return f.read(where[1])


def read_item_bytes(root: Path, item: Item, members: MemberReader) -> tuple[bytes, str]:
    """(bytes, mime) of an item: a file path (relative ones live under the index directory) or a member."""
    if item.path:
        path = Path(item.path)
        if not path.is_absolute():
            path = (root / path).resolve()
            if root.resolve() not in path.parents:
                raise IndexInputError(f"item {item.id}: recorded path escapes the index directory")
        try:
            return path.read_bytes(), mime_for(path.name)
        except OSError as exn:
            raise IndexInputError(f"item {item.id}: cannot read {path}: {exn.strerror or exn}") from exn
    if item.member:
        return members.read(item.source, item.member), mime_for(item.member)
    raise IndexInputError(f"item {item.id} has no recorded image location")
