"""Frozen-bundle features of a fusion data set, computed once and cached on disk.

The cache key is the bundle's fingerprint and its image preprocess and tokenizer settings, plus the data's
identity (every file's path, size and mtime, and the fields read), so epochs, a second head and `fuse
compare` cost no encoder time, and a retrained bundle or an edited table is never served stale features. Unique images and unique texts are embedded once each
(a question set reuses both heavily); pairs are index pairs into them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from clipforge.data.shards import skip_reasons
from clipforge.encoders.bundle import read_bundle_meta
from clipforge.fusion.data import Row, data_files, file_stamp, is_table, shard_rows, table_rows
from clipforge.index.embed import TALLIES

log = logging.getLogger(__name__)
CACHE_VERSION = 1
# what np.load raises on a cache entry that is empty, truncated, corrupt or not ours
UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


@dataclass
class PairSet:
    image_features: np.ndarray  # [n_images, D] float32, L2-normalised
    text_features: np.ndarray  # [n_texts, D]
    image_idx: np.ndarray  # [N] int64: pair -> row of image_features
    text_idx: np.ndarray  # [N]
    labels: list[Any]  # [N] raw label values
    groups: dict[str, np.ndarray]  # name -> [N] bool
    texts: list[str]  # [n_texts]
    fingerprint: str
    cache_hit: bool = False

    def __len__(self) -> int:
        return len(self.image_idx)

    @property
    def dim(self) -> int:
        return int(self.image_features.shape[1])

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """The gathered features, [N, D] x2."""
        return self.image_features[self.image_idx], self.text_features[self.text_idx]


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "clipforge" / "fusion"


def check_device(name: str) -> None:
    """Refuse a device name torch does not know, or CUDA on a machine without it (one line)."""
    from clipforge.encoders.device import resolve_device

    try:
        resolve_device(name)
    except (RuntimeError, ValueError) as exn:
        raise ValueError(f"device {name!r} is not usable here: {' '.join(str(exn).split())}") from None


def cache_key(fingerprint: str, spec: str, files: list[Path], fields: dict[str, Any]) -> str:
    ident = {"v": CACHE_VERSION, "bundle": fingerprint, "spec": spec, "files": file_stamp(files), "fields": fields}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def load_pairs(
    spec: str,
    bundle_path: str | Path,
    *,
    image_key: str = "image",
    text_key: str = "text",
    label_key: str = "label",
    group_keys: tuple[str, ...] = (),
    cache_dir: str | Path | None = None,
    batch_size: int = 128,
    device: str = "auto",
    progress: bool = True,
) -> PairSet:
    """The pairs of `spec` (table or shards) embedded by the bundle at `bundle_path`, from the cache if there."""
    check_device(device)  # up front: a cache hit must not hide a device typo until the cache goes stale
    meta = read_bundle_meta(bundle_path)
    fingerprint = str(meta["weights_sha256"])
    fields = {
        "image": image_key,
        "text": text_key,
        "label": label_key,
        "groups": list(group_keys),
        # the same weights with another image preprocess or tokenizer embed differently: not the same entry
        "encode": {"preprocess": meta.get("preprocess"), "tokenizer": meta.get("tokenizer")},
    }
    stats: Counter = Counter()
    table = is_table(spec)
    rows = table_rows(spec, image_key, text_key, label_key, group_keys) if table else None
    key = cache_key(fingerprint, spec, data_files(spec, rows), fields)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    path = cache / f"{key}.npz"
    if path.is_file():
        try:
            pairs = _read(path, fingerprint)
        except UNREADABLE as exn:  # a torn or foreign file: recompute it
            log.warning("feature cache %s unreadable (%s): recomputing", path, exn)
        else:
            _touch(path)  # its last use, for `fuse cache --older-than`
            return pairs
    why = ""
    if rows is None:
        rows = shard_rows(spec, text_key, label_key, group_keys, stats)
        skipped = skip_reasons(stats, ignore=TALLIES)  # "incomplete": no image, no text or no label field
        why = f"{skipped}; the label is the json member's {label_key!r} field" if skipped else ""
        if why and rows:
            log.warning("%s: samples skipped (%s)", spec, why)
    if not rows:
        raise ValueError(f"{spec}: no usable (image, text, label) rows" + (f" ({why})" if why else ""))
    pairs = _embed(rows, bundle_path, fingerprint, batch_size, device, progress, stats)
    _write(path, pairs)
    return pairs


def embed_rows(
    rows: list[Row], bundle: Any, batch_size: int, progress: bool, stats: Counter
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(image identity -> feature, text -> feature): every unique image once (those that do not decode are
    left out and counted in `stats`), and every unique text of a pair whose image decoded."""
    from clipforge.index.embed import Record, embed_records

    images = list(dict.fromkeys(r.image for r in rows))  # unique, in first-seen order
    data = {r.image: r.data for r in rows if r.data is not None}
    records = (
        Record(key=im, caption=None, source="fusion", path=None if im in data else im, data=data.get(im))
        for im in images
    )
    feats: dict[str, np.ndarray] = {}
    for batch in embed_records(
        bundle, records, batch_size=batch_size, stats=stats, total=len(images), progress=progress
    ):
        for item, f in zip(batch.items, batch.image_features, strict=True):
            feats[item.key] = f
    texts = list(dict.fromkeys(r.text for r in rows if r.image in feats))
    text_feats: dict[str, np.ndarray] = {}
    quiet = not progress or not texts  # no "0/0" bar when no image decoded (the caller says why)
    for i in tqdm(range(0, len(texts), 256), desc="embed texts", unit="batch", disable=quiet):
        chunk = texts[i : i + 256]
        text_feats.update(zip(chunk, bundle.encode_texts(chunk).numpy(), strict=True))
    return feats, text_feats


def _embed(
    rows: list[Row], bundle_path: Any, fingerprint: str, batch_size: int, device: str, progress: bool, stats: Counter
) -> PairSet:
    from clipforge.encoders.bundle import load_bundle

    bundle = load_bundle(bundle_path, device=device)
    feats, text_feats = embed_rows(rows, bundle, batch_size, progress, stats)
    kept = [r for r in rows if r.image in feats]
    if len(kept) < len(rows):
        log.warning(
            "%d of %d pairs dropped: their image did not decode (%s)",
            len(rows) - len(kept),
            len(rows),
            skip_reasons(stats, ignore=TALLIES),
        )
    if not kept:
        raise ValueError("no image of the data set could be decoded")
    images = list(dict.fromkeys(r.image for r in kept))  # first-seen order, as the cache has always held them
    texts = list(text_feats)
    img_pos = {im: i for i, im in enumerate(images)}
    txt_pos = {t: i for i, t in enumerate(texts)}
    group_names = list(kept[0].groups)
    return PairSet(
        image_features=np.stack([feats[im] for im in images]).astype(np.float32),
        text_features=np.stack([text_feats[t] for t in texts]).astype(np.float32),
        image_idx=np.array([img_pos[r.image] for r in kept], np.int64),
        text_idx=np.array([txt_pos[r.text] for r in kept], np.int64),
        labels=[r.label for r in kept],
        groups={g: np.array([r.groups[g] for r in kept], bool) for g in group_names},
        texts=texts,
        fingerprint=fingerprint,
    )


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):  # a read-only cache still serves its entries
        os.utime(path)


@dataclass
class CacheEntry:
    path: Path
    size: int  # bytes
    last_used: float  # epoch seconds: written, or last read by `load_pairs`
    fingerprint: str  # the bundle's; "" when the file cannot be read
    pairs: int


def cache_entries(cache_dir: str | Path | None = None) -> list[CacheEntry]:
    """The feature cache's entries, least recently used first (a torn or foreign .npz is listed too)."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    out = []
    for path in sorted(cache.glob("[!.]*.npz")) if cache.is_dir() else []:  # ".name.*.npz": a write in progress
        st = path.stat()
        try:
            with np.load(path, allow_pickle=False) as z:
                fingerprint, pairs = str(z["fingerprint"]), int(len(z["image_idx"]))
        except UNREADABLE:
            fingerprint, pairs = "", 0
        out.append(CacheEntry(path, st.st_size, st.st_mtime, fingerprint, pairs))
    return sorted(out, key=lambda e: e.last_used)


def _write(path: Path, p: PairSet) -> None:
    """Atomically (temp file + rename): a killed run leaves no torn cache entry behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {
        "image_features": p.image_features,
        "text_features": p.text_features,
        "image_idx": p.image_idx,
        "text_idx": p.text_idx,
        "labels": np.array([json.dumps(v) for v in p.labels]),  # unicode array: no pickle needed to read it
        "texts": np.array(p.texts),
        "fingerprint": np.array(p.fingerprint),
        **{f"group:{g}": v for g, v in p.groups.items()},
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())  # the bytes on disk before the name points at them (a crash mid-way)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path, fingerprint: str) -> PairSet:
    with np.load(path, allow_pickle=False) as z:
        if str(z["fingerprint"]) != fingerprint:
            raise ValueError("entry of another bundle")
        return PairSet(
            image_features=z["image_features"],
            text_features=z["text_features"],
            image_idx=z["image_idx"],
            text_idx=z["text_idx"],
            labels=[json.loads(s) for s in z["labels"].tolist()],
            groups={k.removeprefix("group:"): z[k] for k in z.files if k.startswith("group:")},
            texts=[str(s) for s in z["texts"].tolist()],
            fingerprint=fingerprint,
            cache_hit=True,
        )
