"""Reading WebDataset shards: shared by training (the training stream) and index (embedding shards).

Opening URLs (local paths, `pipe:`), brace expansion and grouping members into samples come from the
webdataset library; tar headers are parsed by `data.tarstream`, a lean reader cheaper than `tarfile` per
sample (`benchmarks/shard_read.py`; figures in benchmarks/RESULTS.md). This module adds the decoding policy: which member is the
image and which the caption, and why a sample is skipped.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import braceexpand
import webdataset as wds

from clipforge.data.tarstream import TarError, tar_members
from clipforge.encoders.images import DEFAULT_MAX_PIXELS, ImageDecodeError, load_image
from clipforge.encoders.text import MAX_CAPTION_CHARS, clean_caption

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members, skipped as webdataset does


def expand_urls(spec: str) -> list[str]:
    """Brace-expand a spec; '::' separates several patterns (as in open_clip)."""
    urls: list[str] = []
    for part in spec.split("::"):
        urls.extend(braceexpand.braceexpand(part.strip()))
    return urls


def read_caption(sample: dict[str, Any], caption_key: str) -> str | None:
    if caption_key.startswith("json:"):
        raw = sample.get("json")
        if raw is None:
            return None
        record = json.loads(raw)
        if not isinstance(record, dict):  # `null`, a list, a bare string: not a record with fields
            raise ValueError(f"the json member is a {type(record).__name__}, not an object")
        value = record.get(caption_key[5:])
        return value if isinstance(value, str) else None
    raw = sample.get(caption_key)
    return None if raw is None else raw.decode("utf-8", errors="replace")


def decode_sample(
    sample: dict[str, Any], caption_key: str, max_pixels: int, draft_size: int, max_chars: int
) -> tuple[Any, str] | str:
    """(RGB image, caption), or the reason the sample is skipped."""
    try:
        caption = read_caption(sample, caption_key)
    except (ValueError, UnicodeDecodeError):
        return "bad_caption"
    if caption is None or not caption.strip():
        return "no_caption"
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    if key is None:
        return "no_image"
    try:
        image = load_image(sample[key], max_pixels=max_pixels, draft_size=draft_size)
    except ImageDecodeError as exn:
        return "image_too_large" if exn.reason == "too_large" else "bad_image"
    return image, clean_caption(caption, max_chars) or ""


def skip_reasons(stats: Counter, *, ignore: Iterable[str] = (), none: str = "") -> str:
    """`stats`' non-zero counts as "reason: n, ..." (sorted), leaving out the `ignore`d keys; `none` if none."""
    left_out = set(ignore)
    return ", ".join(f"{k}: {v}" for k, v in sorted(stats.items()) if v and k not in left_out) or none


def raw_samples(shards: list[str], stats: Counter) -> Iterator[dict[str, Any]]:
    """Samples (dicts of member bytes) from tar shards; unopenable shards and broken members are counted."""

    def shard_failed(exn: Exception) -> bool:
        stats["shard_error"] += 1
        warnings.warn(f"skipping shard that cannot be opened: {_reason(exn)}", stacklevel=2)
        return True

    def member_failed(exn: Exception) -> bool:
        stats["broken_member"] += 1
        return True

    opened = wds.tariterators.url_opener([{"url": u} for u in shards], handler=shard_failed)
    yield from wds.tariterators.group_by_keys(_shard_files(opened, member_failed), handler=member_failed)


def _reason(exn: Exception) -> str:
    """An OSError as `permission denied: PATH`, not Python's `[Errno 13] Permission denied: 'PATH'`."""
    if isinstance(exn, OSError) and exn.strerror:
        what = exn.strerror[:1].lower() + exn.strerror[1:]
        return f"{what}: {os.fsdecode(exn.filename)}" if isinstance(exn.filename, str | bytes | os.PathLike) else what
    return str(exn)


def _shard_files(opened: Iterator[dict[str, Any]], failed: Any) -> Iterator[dict[str, Any]]:
    """webdataset's file records ({fname, data, __url__}, then {} at each shard's end) via our tar reader.

    Same contract as webdataset's tar_file_expander (metadata members named __*__ skipped, a broken shard
    reported to `failed` and left for the next one), with `data.tarstream` in place of `tarfile`."""
    for source in opened:
        url = source["url"]
        try:
            for name, data in tar_members(source["stream"]):
                if name.startswith("__") and _META.match(name):
                    continue
                yield {"fname": name, "data": data, "__url__": url}
        except (TarError, OSError, ValueError) as exn:
            failed(TarError(f"{exn} @ {url}"))
        yield {}


def iter_pairs(
    spec: str,
    *,
    caption_key: str = "txt",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int = 0,
    limit: int = 0,
    stats: Counter | None = None,
) -> Iterator[tuple[Any, str, dict[str, Any]]]:
    """One ordered pass over shards (no split, no shuffle): (RGB image, caption, raw sample) triples.

    Pass `stats` (a Counter) to learn how many samples were skipped and why."""
    stats = Counter() if stats is None else stats
    n = 0
    for sample in raw_samples(expand_urls(spec), stats):
        out = decode_sample(sample, caption_key, max_pixels, draft_size, MAX_CAPTION_CHARS)
        if isinstance(out, str):
            stats[out] += 1
            continue
        yield out[0], out[1], sample
        n += 1
        if limit and n >= limit:
            return
