"""(image, text, label) rows of a fusion data set: a CSV/JSONL table of image paths, or WebDataset shards.

Table: one row per pair; `image` is a path relative to the table's folder (or absolute), `text` the
question or caption, `label` the answer (binary: yes/no, true/false, 1/0; multiclass: a name; multilabel: a
list of names). Shards: the image member (jpg/png/webp), the text from `txt` (or `json:<field>`), the label
from a field of the `json` member. Boolean fields named in `group_keys` (e.g. `heldout`) mark subsets that
evaluation reports separately.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipforge.data.shards import IMAGE_KEYS, expand_urls, raw_samples, read_caption


@dataclass
class Row:
    image: str  # an identity for the image: a resolved path, or the sha1 of a shard member's bytes
    text: str
    label: Any
    groups: dict[str, bool] = field(default_factory=dict)
    data: bytes | None = None  # a shard member's bytes (tables read the file at `image` instead)


def is_table(spec: str) -> bool:
    return Path(spec).suffix.lower() in (".jsonl", ".csv") and "::" not in spec


def _truthy(v: Any) -> bool:
    return v is True or (isinstance(v, str) and v.strip().lower() in ("true", "1", "yes")) or v == 1


def table_rows(
    path: str | Path, image_key: str, text_key: str, label_key: str, group_keys: tuple[str, ...]
) -> list[Row]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no table {path}")
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            records: list[Any] = list(csv.DictReader(f))
    else:
        records = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    raise ValueError(f"{path}:{n}: not a JSON line") from None
    rows = []
    for n, rec in enumerate(records, 1):
        if not isinstance(rec, dict) or not all(k in rec for k in (image_key, text_key, label_key)):
            raise ValueError(f"{path}: row {n} lacks one of the fields {image_key!r}, {text_key!r}, {label_key!r}")
        image = Path(str(rec[image_key]))
        image = image if image.is_absolute() else path.parent / image
        rows.append(
            Row(
                str(image.resolve()),
                " ".join(str(rec[text_key]).split()),
                rec[label_key],
                {g: _truthy(rec.get(g, False)) for g in group_keys},
            )
        )
    return rows


def shard_rows(spec: str, text_key: str, label_key: str, group_keys: tuple[str, ...], stats: Counter) -> list[Row]:
    urls = expand_urls(spec)
    missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not Path(u).is_file()]
    if missing:
        raise FileNotFoundError(f"shard not found: {missing[0]}")
    rows = []
    for sample in raw_samples(urls, stats):
        ext = next((k for k in IMAGE_KEYS if k in sample), None)
        try:
            text = read_caption(sample, text_key)
            meta = json.loads(sample["json"]) if "json" in sample else {}
        except (ValueError, UnicodeDecodeError):
            stats["bad_json_or_text"] += 1
            continue
        if ext is None or not text or not isinstance(meta, dict) or label_key not in meta:
            stats["incomplete"] += 1
            continue
        data = sample[ext]
        rows.append(
            Row(
                hashlib.sha1(data).hexdigest(),
                " ".join(text.split()),
                meta[label_key],
                {g: _truthy(meta.get(g, False)) for g in group_keys},
                data,
            )
        )
    return rows


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
