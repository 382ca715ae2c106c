"""(image, text, label) rows of a fusion data set: a CSV/JSONL table of image paths, or WebDataset shards.

Table: one row per pair; `image` is a path relative to the table's folder (or absolute), `text` the
question or caption, `label` the answer (binary: yes/no, true/false, 1/0; multiclass: a name; multilabel: a
list of names). Shards: the image member (jpg/png/webp), the text from `txt` (the default key "text" reads
it; or `json:<field>`), the label from a field of the `json` member. Boolean fields named in `group_keys` (e.g. `heldout`) mark subsets that
evaluation reports separately.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipforge.data.shards import IMAGE_KEYS, expand_urls, raw_samples, read_caption

log = logging.getLogger(__name__)


@dataclass
class Row:
    image: str  # an identity for the image: a resolved path, or the sha1 of a shard member's bytes
    text: str
    label: Any
    groups: dict[str, bool] = field(default_factory=dict)
    data: bytes | None = None  # a shard member's bytes (tables read the file at `image` instead)
    ref: str = ""  # where the pair came from, for a person: "row N" of a table, a shard sample's key


def is_table(spec: str) -> bool:
    return Path(spec).suffix.lower() in (".jsonl", ".csv") and "::" not in spec


TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no", "")


def _flag(v: Any, where: str, key: str) -> bool:
    """A group field's value as a bool; anything else is refused (a typo must not silently mean False)."""
    if v is None or isinstance(v, bool) or (isinstance(v, int | float) and v in (0, 1)):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return v.strip().lower() in TRUE_WORDS
    raise ValueError(f"{where}: group field {key!r} must be true/false (or 1/0), got {v!r}")


def _checked(where: str, text: Any, label: Any, text_key: str, labelled: bool = True) -> str:
    """The row's text, whitespace-normalised; refuses an empty or null text, a null label (a missing CSV cell,
    JSON null: not a class named "None") and a non-string in a label list."""
    clean = " ".join(text.split()) if isinstance(text, str) else ""
    if not clean:
        raise ValueError(f"{where}: empty or null text field {text_key!r} (got {text!r})")
    if labelled and label is None:
        raise ValueError(f"{where}: the label field is missing or null")
    if isinstance(label, list) and not all(isinstance(x, str) for x in label):
        bad = next(x for x in label if not isinstance(x, str))
        raise ValueError(f"{where}: label list {label!r} holds a non-string {bad!r}")
    return clean


def table_rows(
    path: str | Path, image_key: str, text_key: str, label_key: str | None, group_keys: tuple[str, ...]
) -> list[Row]:
    """The table's rows; `label_key` None reads unlabelled pairs (label None), as `fuse predict` does."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no table {path}")
    try:
        content = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Excel's CSV) is not part of a name
    except UnicodeDecodeError as exn:
        raise ValueError(f"{path}: not UTF-8 text ({exn.reason} at byte {exn.start})") from None
    if path.suffix.lower() == ".csv":
        records: list[Any] = list(csv.DictReader(io.StringIO(content, newline="")))
    else:
        records = []
        for n, line in enumerate(content.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    raise ValueError(f"{path}:{n}: not a JSON line") from None
    rows: list[Row] = []
    seen: set[str] = set()
    needed = (image_key, text_key) + ((label_key,) if label_key is not None else ())
    for n, rec in enumerate(records, 1):
        if not isinstance(rec, dict) or not all(k in rec for k in needed):
            raise ValueError(f"{path}: row {n} lacks one of the fields {', '.join(map(repr, needed))}")
        image = Path(str(rec[image_key]))
        image = image if image.is_absolute() else path.parent / image
        where = f"{path}: row {n}"
        label = rec[label_key] if label_key is not None else None
        text = _checked(where, rec[text_key], label, text_key, labelled=label_key is not None)
        groups = {g: _flag(rec.get(g), where, g) for g in group_keys}
        seen.update(g for g in group_keys if g in rec)
        rows.append(Row(str(image.resolve()), text, label, groups, ref=f"row {n}"))
    _warn_unseen(str(path), group_keys, seen)
    return rows


def _warn_unseen(spec: str, group_keys: tuple[str, ...], seen: set[str]) -> None:
    for g in group_keys:
        if g not in seen:
            log.warning("%s: no row has the group field %r: its subset is empty", spec, g)


def shard_rows(
    spec: str, text_key: str, label_key: str | None, group_keys: tuple[str, ...], stats: Counter
) -> list[Row]:
    seen: set[str] = set()
    rows = list(iter_shard_rows(spec, text_key, label_key, group_keys, stats, seen))
    _warn_unseen(spec, group_keys, seen)
    return rows


def iter_shard_rows(
    spec: str, text_key: str, label_key: str | None, group_keys: tuple[str, ...], stats: Counter, seen: set[str]
) -> Iterator[Row]:
    """The shards' rows one at a time (a missing shard is refused at once, before the first); the group
    fields met are added to `seen`, samples that are not rows counted in `stats`."""
    if Path(spec).suffix.lower() in (".json", ".tsv", ".txt", ".parquet"):
        raise ValueError(
            f"{spec}: a table is a .jsonl (one JSON object per line) or a .csv file; anything else is "
            "read as WebDataset .tar shards"
        )
    urls = expand_urls(spec)
    missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not Path(u).is_file()]
    if missing:
        raise FileNotFoundError(f"shard not found: {missing[0]}")
    return _shard_rows(spec, urls, text_key, label_key, group_keys, stats, seen)


def _shard_rows(
    spec: str,
    urls: list[str],
    text_key: str,
    label_key: str | None,
    group_keys: tuple[str, ...],
    stats: Counter,
    seen: set[str],
) -> Iterator[Row]:
    for sample in raw_samples(urls, stats):
        ext = next((k for k in IMAGE_KEYS if k in sample), None)
        try:
            text = read_caption(sample, text_key)
            if text is None and text_key == "text":  # the default key names the WebDataset member `txt`
                text = read_caption(sample, "txt")
            meta = json.loads(sample["json"]) if "json" in sample else {}
        except (ValueError, UnicodeDecodeError):
            stats["bad_json_or_text"] += 1
            continue
        if ext is None or not text or not isinstance(meta, dict) or (label_key is not None and label_key not in meta):
            stats["incomplete"] += 1
            continue
        data = sample[ext]
        where = f"{spec}: sample {sample.get('__key__', '?')!r}"
        groups = {g: _flag(meta.get(g), where, g) for g in group_keys}
        seen.update(g for g in group_keys if g in meta)
        label = meta[label_key] if label_key is not None else None
        text = _checked(where, text, label, "text", labelled=label_key is not None)
        ref = f"{sample.get('__url__', spec)}:{sample.get('__key__', '?')}"
        yield Row(hashlib.sha1(data).hexdigest(), text, label, groups, data, ref=ref)


def data_files(spec: str, rows: list[Row] | None = None) -> list[Path]:
    """The files whose (path, size, mtime) identify the data: shards, or a table and every image it names."""
    if is_table(spec):
        if rows is None:
            raise ValueError("a table's files are known once its rows are read")
        return [Path(spec).resolve(), *sorted({Path(r.image) for r in rows})]
    return [Path(u).resolve() for u in expand_urls(spec) if "://" not in u and not u.startswith("pipe:")]


def file_stamp(paths: list[Path]) -> list[tuple[str, int, int]]:
    out = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            out.append((str(p), -1, -1))  # a missing image: the encoder skips it; the stamp still changes
            continue
        out.append((str(p), st.st_size, st.st_mtime_ns))
    return out
