"""The metadata table: one SQLite row per indexed image, keyed by the id the FAISS indexes use.

A version's `meta.sqlite` is written once and then only read (opened `immutable=1`, so readers take no
locks and a file deleted by garbage collection stays readable through an open connection).
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from clipforge.index.types import IndexInputError, IndexUnreadableError, Item

COLUMNS = ("key", "caption", "source", "member", "path", "width", "height")
SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    caption TEXT,
    source TEXT NOT NULL,
    member TEXT,
    path TEXT,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    extra TEXT NOT NULL DEFAULT '{}'
);
"""
Row = tuple[int, str, str | None, str, str | None, str | None, int, int, str]
MAX_FILTER_FIELDS = 64  # SQLite's expression tree is 1,000 deep: ~1,000 ANDed fields would overflow it
# values over all fields: each is a bound parameter, up to 4 times for a dotted non-ASCII key (`filter_target`), and
# SQLite refuses a statement with more than its variable limit (32,766 by default, 250,000 in some builds)
MAX_FILTER_VALUES = 1024
# a filter key is a field, or a dotted path into nested metadata ("exif.camera"): at most MAX_PATH_DEPTH names of
# at most 64 characters, none of which ends the quoted label of a JSON path ('"', '\\') or is a control character.
# A dotted key also matches a flat key spelled with that dot ({"exif.camera": ...}, as flattened EXIF or CSV
# headers often are): either reading may match.
MAX_PATH_DEPTH = 8
UNNAMEABLE = re.compile(r'["\\\x00-\x1f\x7f]')
INT64 = (-(2**63), 2**63 - 1)


def encodable(text: str) -> bool:
    """Whether `text` can be stored and sent as UTF-8 (no lone surrogates, as JSON escapes or undecodable
    file names can produce)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def clean_text(text: str | None) -> str | None:
    """`text` with any lone surrogate replaced by U+FFFD: for names and captions read from data files."""
    if text is None or encodable(text):
        return text
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def check_extra(value: Any, where: str = "metadata") -> None:
    """Refuse metadata that could be stored but not written back out as JSON or searched with
    json_extract: non-finite numbers, integers beyond 64 bits, strings (keys too) that are not UTF-8."""
    if isinstance(value, float) and not math.isfinite(value):
        raise IndexInputError(f"{where}: numbers must be finite, got {value}")
    if isinstance(value, int) and not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]:
        raise IndexInputError(f"{where}: integers must fit in 64 bits")
    if isinstance(value, str) and not encodable(value):
        raise IndexInputError(f"{where}: text is not valid Unicode (a lone surrogate)")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str) or not encodable(k):
                raise IndexInputError(f"{where}: keys must be valid Unicode strings")
            check_extra(v, f"{where}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            check_extra(v, f"{where}[{i}]")


MAX_METADATA_BYTES = 16 * 1024  # one item's metadata as JSON: a record about an image, not a document store


def filter_target(name: Any) -> str | list[str]:
    """What a filter key reads: a table column's name, or the JSON paths of a metadata field: `$."a"."b"` (b
    inside a) and `$."a.b"` (a flat key with the dot in it). A non-ASCII key has a second, escaped spelling:
    rows stored before 2026-12-01 kept such keys as \\u escapes, and SQLite matches a path's labels against
    keys as stored."""
    parts = name.split(".") if isinstance(name, str) else []
    if not parts or len(parts) > MAX_PATH_DEPTH or any(not 1 <= len(p) <= 64 or UNNAMEABLE.search(p) for p in parts):
        raise IndexInputError(
            f"filter key {name!r}: a field name (1-64 characters, no '\"', '\\' or control characters), or a "
            f"path a.b.c to a field inside objects, at most {MAX_PATH_DEPTH} names deep"
        )
    if name in COLUMNS or name == "id":
        return str(name)
    paths = []
    for labels in [parts, [name]] if len(parts) > 1 else [parts]:  # nested, then a flat key with the dots in it
        plain = "$" + "".join(f'."{p}"' for p in labels)
        escaped = "$" + "".join(f".{json.dumps(p)}" for p in labels)  # json.dumps escapes non-ASCII as \\uXXXX
        paths += [plain] if escaped == plain else [plain, escaped]
    return paths


def check_filters(filters: dict[str, Any]) -> list[tuple[str | list[str], list[Any]]]:
    """The index's rule for a search's filters (the service checks requests with it before any work): per
    field, what it reads (`filter_target`) and its values, a list meaning any of them."""
    if len(filters) > MAX_FILTER_FIELDS:
        raise IndexInputError(f"{len(filters)} filter fields is over the limit of {MAX_FILTER_FIELDS}")
    checked = []
    total = 0
    for name, value in filters.items():
        target = filter_target(name)
        values = list(value) if isinstance(value, list | tuple | set) else [value]
        if not values:
            raise IndexInputError(f"filter {name!r} has an empty list of values")
        total += len(values)
        if total > MAX_FILTER_VALUES:
            raise IndexInputError(f"the filters have more than {MAX_FILTER_VALUES} values in all (the limit)")
        if any(isinstance(v, dict | list) for v in values):
            raise IndexInputError(f"filter {name!r}: values must be strings, numbers or booleans")
        check_extra(values, f"filter {name!r}")  # 64-bit integers, finite numbers, valid Unicode
        checked.append((target, values))
    return checked


def check_metadata(value: dict[str, Any], where: str = "metadata") -> None:
    """One item's metadata: storable and searchable (`check_extra`), and at most MAX_METADATA_BYTES as JSON."""
    check_extra(value, where)
    size = len(json.dumps(value, default=str, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    if size > MAX_METADATA_BYTES:
        raise IndexInputError(f"{where}: {size:,} bytes as JSON, more than the {MAX_METADATA_BYTES:,} allowed")


def row_for(item: Item) -> Row:
    check_metadata(item.extra)
    # ensure_ascii=False: SQLite's JSON paths match keys as stored, so an escaped "gr\u00f6\u00dfe" was never
    # found by a filter on "größe" (values are unescaped either way)
    extra = json.dumps(item.extra, sort_keys=True, default=str, allow_nan=False, ensure_ascii=False)
    key, caption, source, member, path = (
        clean_text(t) for t in (item.key, item.caption, item.source, item.member, item.path)
    )
    return (item.id, key or "", caption, source or "", member, path, item.width, item.height, extra)


def _item(row: tuple[Any, ...]) -> Item:
    extra = json.loads(row[8]) if row[8] else {}
    return Item(row[0], row[1], row[2], row[3], row[4], row[5], int(row[6]), int(row[7]), extra)


class MetaWriter:
    """Write side, used only while a new version is being assembled in its temporary directory."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(str(path))
        self.conn.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + SCHEMA)

    def insert(self, rows: Iterable[Row]) -> None:
        self.conn.executemany("INSERT INTO items VALUES (?,?,?,?,?,?,?,?,?)", rows)

    def delete(self, ids: list[int]) -> None:
        self.conn.executemany("DELETE FROM items WHERE id = ?", [(i,) for i in ids])

    def close(self) -> None:
        """Commit and make the file durable: the caller renames the version directory next."""
        self.conn.commit()
        self.conn.execute("VACUUM")
        self.conn.close()


class MetaReader:
    """Read side of an immutable version; safe to share across threads (queries are serialised)."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise IndexUnreadableError(f"{path} is missing: the index is incomplete")
        uri = f"file:{path.resolve()}?immutable=1"
        self.conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        self.lock = threading.Lock()
        try:
            self.count()
        except sqlite3.DatabaseError as exn:
            raise IndexUnreadableError(
                f"{path} is not a readable metadata table ({exn}): truncated or corrupt"
            ) from exn

    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self.lock:
            return self.conn.execute(sql, tuple(args)).fetchall()

    def count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM items")[0][0])

    def get_many(self, ids: list[int]) -> dict[int, Item]:
        out: dict[int, Item] = {}
        ids = [i for i in ids if INT64[0] <= i <= INT64[1]]  # beyond SQLite's integers no id can be stored
        for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._query(f"SELECT * FROM items WHERE id IN ({marks})", chunk):
                out[int(row[0])] = _item(row)
        return out

    def existing(self, ids: list[int]) -> set[int]:
        return set(self.get_many(ids))

    def filter_ids(self, filters: dict[str, Any]) -> list[int]:
        """Ids whose fields equal the filter values (a list means any of them); extra fields via JSON."""
        clauses: list[str] = []
        args: list[Any] = []
        for target, values in check_filters(filters):
            marks = ",".join("?" * len(values))
            if isinstance(target, str):  # a column
                clauses.append(f"{target} IN ({marks})")
                args.extend(values)
                continue
            # a metadata field: paths bound as parameters, and only scalar leaves match (json_extract returns an
            # object or array as its JSON text, which a string value could otherwise equal)
            one = f"(json_extract(extra, ?) IN ({marks}) AND json_type(extra, ?) NOT IN ('object', 'array'))"
            clauses.append("(" + " OR ".join([one] * len(target)) + ")")
            for path in target:
                args.extend([path, *values, path])
        where = " AND ".join(clauses) or "1"
        return [int(r[0]) for r in self._query(f"SELECT id FROM items WHERE {where}", args)]

    def close(self) -> None:
        with self.lock:
            self.conn.close()
