"""A streaming reader for the tar members of WebDataset shards, cheaper than `tarfile`.

Python's `tarfile` builds a full `TarInfo` per member (every field parsed, several Python calls per field);
for shards of small JPEGs that was the largest single cost in a data worker's profile, and on small machines
a worker's CPU is CPU taken from the training step (`benchmarks/shard_read.py` measures it; figures in
benchmarks/RESULTS.md). This reader parses only what a shard needs (name, size, type), checks each
header's checksum, and understands the members real shards contain: ustar and GNU regular files, POSIX
pax headers ('x' per member, 'g' global) and GNU long names ('L'). Directories, links and other special
members are skipped. A corrupt header or a truncated member raises `TarError`, which the caller counts.

`tests/data/test_tarstream.py` checks it against `tarfile` on archives written by `tarfile` in every
format, by webdataset's TarWriter, and on truncated and corrupted ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

BLOCK = 512
_REGULAR = (b"0", b"\0", b"7")


class TarError(ValueError):
    """The stream is not a readable tar archive at this point."""


def _number(field: bytes) -> int:
    """A numeric header field: octal ASCII (NUL/space padded) or GNU base-256 for big values."""
    if field[:1] and field[0] & 0x80:  # GNU base-256: big-endian, the first byte's high bit is the marker
        if field[0] & 0x40:
            raise TarError(f"negative numeric field {field!r}")
        return int.from_bytes(bytes([field[0] & 0x3F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError as exn:
        raise TarError(f"bad numeric field {field!r}") from exn


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise TarError(f"unexpected end of archive ({len(data)} of {n} bytes)")
    return data


def _pax_records(data: bytes) -> dict[str, str]:
    """'<len> <key>=<value>\\n' records of a pax header."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        if length <= 0:
            raise TarError("bad pax record length")
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def tar_members(stream: IO[bytes]) -> Iterator[tuple[str, bytes]]:
    """(name, content) of each regular file, in archive order, reading the stream once."""
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        header = stream.read(BLOCK)
        if not header:
            return  # end of stream without the end-of-archive blocks: tolerated, as tarfile does
        if len(header) != BLOCK:
            raise TarError(f"truncated header ({len(header)} bytes)")
        if header.count(0) == BLOCK:
            return  # end-of-archive marker
        stored = _number(header[148:156])
        if stored != sum(header[:148]) + 256 + sum(header[156:]):  # checksum field counted as 8 spaces
            signed = sum(b - 256 if b > 127 else b for b in header[:148] + header[156:]) + 256  # old tars
            if stored != signed:
                raise TarError("header checksum mismatch")
        kind = header[156:157]
        size = _number(header[124:136])
        if "size" in pax:
            size = int(pax["size"])
        padded = (size + BLOCK - 1) // BLOCK * BLOCK
        if kind in (b"x", b"g", b"L", b"K"):
            data = _read_exact(stream, padded)[:size]
            if kind == b"x":
                pax = _pax_records(data)
            elif kind == b"L":
                long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue  # 'g' (global pax) and 'K' (long link name) carry nothing a shard needs
        if long_name is not None:
            name = long_name
        elif "path" in pax:
            name = pax["path"]
        else:
            name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            if header[257:263] == b"ustar\x00" and header[345] != 0:  # POSIX ustar: name = prefix/name
                name = header[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape") + "/" + name
        long_name, pax = None, {}
        if kind in _REGULAR:
            data = _read_exact(stream, padded)
            yield name, data[:size] if padded != size else data
        elif padded:
            _read_exact(stream, padded)  # directories, links, devices: skipped
