"""Embedding images and captions for the index: read records, decode on worker threads, encode in batches.

Decoding (file/tar read, JPEG decode, resize, and one vectorised float conversion + normalisation per
batch) runs on a thread pool a few batches ahead of the model, so the encoder never waits on PIL: PIL and
torch both release the GIL in their heavy loops.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from clipforge.data.shards import IMAGE_KEYS, expand_urls, raw_samples, read_caption
from clipforge.encoders.images import IMAGE_EXTENSIONS, ImageDecodeError
from clipforge.encoders.text import clean_caption
from clipforge.index.meta import check_extra
from clipforge.index.types import IndexInputError, Item

TALLIES = ("embedded", "embed_seconds_x1000")  # keys of embed_records' stats that count work done, not skips


@dataclass
class Record:
    """One image before decoding: its bytes (or a path to read them from) and where it came from."""

    key: str
    caption: str | None
    source: str
    member: str | None = None
    path: str | None = None
    data: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Batch:
    items: list[Item]
    image_features: np.ndarray  # [n, D] float32, L2-normalised
    caption_ids: np.ndarray  # [m] ids of the items that have a caption
    caption_features: np.ndarray  # [m, D]


def is_folder(data: str) -> bool:
    return Path(data).is_dir()


def _json_dict(raw: bytes | None) -> dict[str, Any]:
    """A sample's JSON metadata, or {} when it is not a JSON object that can be stored and searched (NaN,
    1e400, lone surrogates, 2**70 are refused by `check_extra`): a bad sidecar never fails the build."""
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
        check_extra(value)
    except (ValueError, UnicodeDecodeError, RecursionError, IndexInputError):
        return {}
    return value if isinstance(value, dict) else {}


def shard_records(spec: str, caption_key: str, stats: Counter) -> Iterator[Record]:
    urls = expand_urls(spec)
    missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not Path(u).is_file()]
    if missing:
        raise FileNotFoundError(
            f"shard not found: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    for sample in raw_samples(urls, stats):
        ext = next((k for k in IMAGE_KEYS if k in sample), None)
        if ext is None:
            stats["no_image"] += 1
            continue
        try:
            caption = read_caption(sample, caption_key)
        except (ValueError, UnicodeDecodeError):
            caption = None
        caption = clean_caption(caption)
        key = str(sample["__key__"])
        source = str(sample.get("__url__", ""))
        yield Record(
            key, caption, source, member=f"{key}.{ext}", data=sample[ext], extra=_json_dict(sample.get("json"))
        )


def folder_records(folder: str) -> Iterator[Record]:
    """Images under `folder` (recursive, sorted); `name.txt` beside `name.jpg` is its caption."""
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS):
        if not path.is_file():
            continue
        txt, meta = path.with_suffix(".txt"), path.with_suffix(".json")
        caption = clean_caption(txt.read_text(errors="replace")) if txt.is_file() else None
        extra = _json_dict(meta.read_bytes()) if meta.is_file() else {}
        key = str(path.relative_to(root).with_suffix(""))
        yield Record(key, caption or None, str(root.resolve()), path=str(path.resolve()), extra=extra)


def count_folder_images(folder: str) -> int:
    return sum(1 for p in Path(folder).rglob("*") if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)


def decode(bundle: Any, rec: Record) -> tuple[Any, int, int] | str:
    """(pixels, width, height) or the reason the image is skipped; pixels as `bundle.image_prep` prepares them
    (uint8 [H, W, 3], made float for the whole batch at once by `image_prep.batch`)."""
    try:
        data = rec.data if rec.data is not None else Path(rec.path or "").read_bytes()
    except OSError:
        return "unreadable"
    try:
        pixels, (width, height) = bundle.image_prep.decode(data)
    except ImageDecodeError as exn:
        return "image_too_large" if exn.reason == "too_large" else "bad_image"
    except Exception:  # a header PIL cannot parse after all: the same as a corrupt image
        return "bad_image"
    return pixels, width, height


def decode_batch(bundle: Any, recs: list[Record]) -> tuple[list[tuple[Record, Any]], Any]:
    """Per record (width, height) or the skip reason, and the pixels [n_ok, 3, H, W] of those that decoded."""
    out: list[tuple[Record, Any]] = []
    pixels: list[Any] = []
    for r in recs:
        d = decode(bundle, r)
        if isinstance(d, str):
            out.append((r, d))
        else:
            pixels.append(d[0])
            out.append((r, d[1:]))
    return out, bundle.image_prep.batch(pixels)


def chunks(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    buf: list[Record] = []
    for r in records:
        buf.append(r)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def embed_records(
    bundle: Any,
    records: Iterator[Record],
    *,
    start_id: int = 0,
    batch_size: int = 64,
    workers: int | None = None,
    stats: Counter | None = None,
    total: int | None = None,
    shards: int | None = None,
    progress: bool = True,
) -> Iterator[Batch]:
    """Embed records in batches; ids are assigned in order from `start_id` to the images that decode.

    `shards`: how many shards the records come from; the bar's total (for its ETA) is then estimated
    from the size of the first shard."""
    if batch_size <= 0:
        raise IndexInputError(f"batch_size must be positive, got {batch_size}")
    stats = Counter() if stats is None else stats
    workers = workers or max(1, min(4, (os.cpu_count() or 2) - 1))
    next_id = start_id
    bar = tqdm(total=total, disable=not progress, unit="img", desc="embed", dynamic_ncols=True, mininterval=1.0)
    bar.shards = shards
    pending: list[Future[tuple[list[tuple[Record, Any]], Any]]] = []
    batches = chunks(records, batch_size)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clipforge-decode") as pool:
        for recs in batches:  # keep workers + 1 batches decoding ahead of the encoder
            pending.append(pool.submit(decode_batch, bundle, recs))
            if len(pending) <= workers:
                continue
            yield from _encode(bundle, *pending.pop(0).result(), stats, bar, next_id)
            next_id = start_id + stats["embedded"]
        while pending:
            yield from _encode(bundle, *pending.pop(0).result(), stats, bar, next_id)
            next_id = start_id + stats["embedded"]
    bar.close()
    stats["embed_seconds_x1000"] += int(1000 * (time.perf_counter() - t0))


def _encode(
    bundle: Any, decoded: list[tuple[Record, Any]], pixels: Any, stats: Counter, bar: Any, next_id: int
) -> Iterator[Batch]:
    items: list[Item] = []
    for rec, out in decoded:
        if isinstance(out, str):
            stats[out] += 1
            continue
        w, h = out
        items.append(
            Item(next_id + len(items), rec.key, rec.caption, rec.source, rec.member, rec.path, w, h, rec.extra)
        )
    bar.update(len(decoded))
    _estimate_total(bar, decoded)
    if not items:
        return
    image_features = bundle.encode_images(pixels).numpy()  # [n, D]
    captioned = [it for it in items if it.caption]
    caption_features = (
        bundle.encode_texts([it.caption for it in captioned]).numpy()
        if captioned
        else np.zeros((0, image_features.shape[1]), np.float32)
    )  # [m, D]
    stats["embedded"] += len(items)
    yield Batch(items, image_features, np.array([it.id for it in captioned], np.int64), caption_features)


def _estimate_total(bar: Any, decoded: list[tuple[Record, Any]]) -> None:
    """Once the first shard is done, total ~ its size x the number of shards (so tqdm can show an ETA)."""
    shards = getattr(bar, "shards", None)
    if bar.total is not None or not shards or not decoded:
        return
    first = getattr(bar, "first_source", None)
    if first is None:
        bar.first_source = first = decoded[0][0].source
    if decoded[-1][0].source != first:
        in_first = bar.n - sum(1 for r, _ in decoded if r.source != first)
        bar.total = max(in_first * shards, bar.n)
        bar.refresh()
