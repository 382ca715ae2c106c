"""Building an index: embed data into parts (one or many processes), then train, fill and tune FAISS.

More data than RAM: embedding streams to chunk files (parts.py); the IVF is trained on a random sample
gathered from them; vectors are added one memory-mapped chunk at a time; the exact top-10 used to
measure recall is accumulated chunk by chunk too. See index/README.md for splitting the embedding step.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from clipforge.index import choice, faiss_index, tuning
from clipforge.index import refine as rx
from clipforge.index.embed import (
    TALLIES,
    count_folder_images,
    embed_records,
    folder_records,
    is_folder,
    shard_records,
)
from clipforge.index.meta import MetaWriter, row_for
from clipforge.index.parts import Parts, PartWriter, check_parts
from clipforge.index.types import IndexInputError, IndexMismatchError

log = logging.getLogger(__name__)

RECALL_QUERIES = 200
NAMES = ("images", "captions")


def embed_to_parts(
    bundle: Any,
    data: str,
    workdir: str | Path,
    *,
    batch_size: int = 64,
    caption_key: str = "txt",
    progress: bool = True,
) -> dict[str, Any]:
    """Embed `data` (shard spec or image folder) into a parts directory; returns its parts.json."""
    work = Path(workdir)
    if work.exists() and (not work.is_dir() or any(work.iterdir())):
        raise IndexInputError(f"{work} is not empty: embed into a new directory (parts would mix with what is there)")
    work.mkdir(parents=True, exist_ok=True)
    stats: Counter = Counter()
    if is_folder(data):
        records, total, shards = folder_records(data), count_folder_images(data), None
    elif any(c in data for c in "{}:/.") or Path(data).suffix == ".tar":
        from clipforge.data.shards import expand_urls

        records, total, shards = shard_records(data, caption_key, stats), None, len(expand_urls(data))
    else:
        raise FileNotFoundError(f"data {data!r} is neither an image folder nor a shard spec")
    meta = MetaWriter(work / "meta.sqlite")
    writers = {name: PartWriter(work, name) for name in NAMES}
    n_items = n_captions = 0
    t0 = time.perf_counter()
    for batch in embed_records(
        bundle, records, batch_size=batch_size, stats=stats, total=total, shards=shards, progress=progress
    ):
        meta.insert(row_for(it) for it in batch.items)
        writers["images"].append(np.array([it.id for it in batch.items], np.int64), batch.image_features)
        writers["captions"].append(batch.caption_ids, batch.caption_features)
        n_items += len(batch.items)
        n_captions += len(batch.caption_ids)
    for w in writers.values():
        w.flush()
    meta.close()
    seconds = time.perf_counter() - t0
    skipped = {k: v for k, v in stats.items() if k not in TALLIES}
    info = {
        "data": data,
        "fingerprint": bundle.fingerprint,
        "dim": bundle.embed_dim,
        "items": n_items,
        "captions": n_captions,
        "skipped": skipped,
        "embed_seconds": round(seconds, 3),
        "embed_images_per_s": round(n_items / seconds, 2) if seconds > 0 else None,
    }
    (work / "parts.json").write_text(json.dumps(info, indent=2))
    return info


def merge_meta(dirs: list[Path], offsets: list[int], out: Path) -> None:
    """One meta.sqlite from several parts directories, ids shifted by each directory's offset."""
    MetaWriter(out).close()
    conn = sqlite3.connect(str(out))
    for i, (d, off) in enumerate(zip(dirs, offsets, strict=True)):
        conn.execute(f"ATTACH DATABASE ? AS p{i}", (str(d / "meta.sqlite"),))
        conn.execute(
            f"INSERT INTO items SELECT id + ?, key, caption, source, member, path, width, height, extra FROM p{i}.items",
            (off,),
        )
        conn.commit()
        conn.execute(f"DETACH DATABASE p{i}")
    conn.close()


def build_one(
    parts: Parts, factory: str, dim: int, seed: int = 0, refine_to: Path | None = None, rows: int = 0
) -> tuple[faiss.Index, dict[str, Any]]:
    """Train `factory` on a sample of the parts, add them chunk by chunk, tune to the recall target.
    `refine_to`: for a compressed (IVF) index, also write the float16 re-rank segment there, for ids
    [0, rows), and tune nprobe and the re-rank depth together (index/refine.py)."""
    rng = np.random.default_rng(seed)
    n = len(parts)
    index = faiss_index.make_index(factory, dim)
    t0 = time.perf_counter()
    need = faiss_index.training_size(index)
    if need:
        _, sample = parts.gather(rng.choice(n, size=min(n, need), replace=False))
        faiss_index.train(index, sample, factory)
    exact_search = factory.strip() in ("Flat", "IDMap2,Flat")
    _, queries = parts.gather(rng.choice(n, size=min(n, RECALL_QUERIES), replace=False))
    truth = tuning.ExactTopK(queries if not exact_search else queries[:0], k=10)

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for ids, vecs in parts.chunks():
            faiss_index.add_chunks(index, [(ids, vecs)])
            truth.update(ids, vecs)
            yield ids, vecs

    refine_section: dict[str, Any] | None = None
    vectors = None
    if refine_to is not None and faiss_index.ivf_of(index) is not None:
        seg = rx.write_segment(refine_to, 0, rows, dim, chunks())
        refine_section = {"dtype": "float16", "k_factor": 1, "segments": [seg]}
        vectors = rx.Vectors.open(refine_to.parent, {"refine": refine_section}, dim)
    else:
        for _ in chunks():
            pass
    params: dict[str, Any]
    if exact_search:
        params, recall = {}, 1.0
    elif refine_section is not None and vectors is not None:
        params, refine_section["k_factor"], recall = rx.tune(index, vectors, queries, truth.ids)
    else:
        params, recall = tuning.tune(index, queries, truth.ids)
    if not 0.0 <= recall <= 1.0:  # NaN or the tuner's -1 (no setting answered): never publish such an index
        raise IndexInputError(
            f"the {factory!r} index answers no query (measured recall@10 {recall}): choose another factory"
        )
    section = {
        "factory": factory,
        "count": int(index.ntotal),
        "search_params": params,
        "recall@10": round(recall, 4),
        "recall_queries": 0 if exact_search else int(len(queries)),
        "train_vectors": int(min(n, need)) if need else 0,
        "build_seconds": round(time.perf_counter() - t0, 3),
        "tombstones": 0,
    }
    if refine_section is not None:
        section["refine"] = refine_section
    return index, section


def build_from_parts(
    dirs: list[str | Path],
    vdir: Path,
    *,
    factory: str | None = None,
    memory_budget_mb: float | None = None,
    refine: bool = True,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """Write images.faiss, captions.faiss and meta.sqlite into `vdir` (and, for compressed indexes with
    `refine`, the float16 re-rank segments); returns manifest sections. `fingerprint`: the bundle the
    parts must have been embedded with (checked before anything is built)."""
    infos = check_parts(dirs)
    paths = [Path(d) for d in dirs]
    if fingerprint is not None and infos[0]["fingerprint"] != fingerprint:
        raise IndexMismatchError(
            f"the parts were embedded with bundle {infos[0]['fingerprint'][:12]}, "
            f"not the one given ({fingerprint[:12]})"
        )
    dim = int(infos[0]["dim"])
    if factory is not None:
        faiss_index.check_factory(factory, dim)  # before the metadata merge and any training
    offsets = list(np.cumsum([0] + [i["items"] for i in infos[:-1]]).astype(int).tolist())
    total = sum(i["items"] for i in infos)
    skipped: Counter = Counter()
    for i in infos:
        skipped.update(i["skipped"])
    if total == 0:
        data = ", ".join(i["data"] for i in infos)
        raise IndexInputError(f"no usable images in {data} (skipped: {dict(skipped) or 'nothing found'})")
    merge_meta(paths, offsets, vdir / "meta.sqlite")
    sections: dict[str, Any] = {}
    counts = {name: sum(i["items" if name == "images" else "captions"] for i in infos) for name in NAMES}
    for name in NAMES:
        parts = Parts(paths, name, offsets)
        n = len(parts)
        share = None if memory_budget_mb is None else memory_budget_mb * n / max(sum(counts.values()), 1)
        chosen = factory or (choice.choose_factory(n, dim, share) if n else "Flat")
        if n and factory and n < 2 * _min_train(chosen, dim):
            chosen = "Flat"  # e.g. few captions: an IVF cannot be trained on them, exact search is right anyway
            log.warning("%s: %d vectors are too few to train %r; built exact search (Flat) instead", name, n, factory)
        if not n and name == "captions" and total:
            log.warning("no captions found for the %d images: caption search will find nothing (--caption-key?)", total)
        refine_to = vdir / rx.segment_name(name, 0) if refine else None
        index, sections[name] = (
            build_one(parts, chosen, dim, refine_to=refine_to, rows=total)
            if n
            else (faiss_index.make_index("Flat", dim), _empty())
        )
        faiss_index.write(index, str(vdir / f"{name}.faiss"))
    return {
        "dim": dim,
        "fingerprint": infos[0]["fingerprint"],
        "counts": {"items": total, **counts, "skipped": dict(skipped)},
        "next_id": total,
        **sections,
        "embedding": {
            "data": [i["data"] for i in infos],
            "seconds": round(sum(i["embed_seconds"] for i in infos), 3),
            "images_per_s": infos[0]["embed_images_per_s"] if len(infos) == 1 else None,
        },
    }


def _min_train(factory: str, dim: int) -> int:
    ivf = faiss_index.ivf_of(faiss_index.make_index(factory, dim))
    return 0 if ivf is None else int(ivf.nlist)


def _empty() -> dict[str, Any]:
    return {
        "factory": "Flat",
        "count": 0,
        "search_params": {},
        "recall@10": 1.0,
        "recall_queries": 0,
        "train_vectors": 0,
        "build_seconds": 0.0,
        "tombstones": 0,
    }
