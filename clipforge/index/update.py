"""Adds and removes: each one writes a complete new version directory, then swaps the pointer.

The live version is never modified, so a crash at any point leaves it readable, and a search running
during an add keeps using the version it loaded. FAISS indexes are copied in memory (serialise +
deserialise), updated, and written into the new version; meta.sqlite is copied and edited.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np
from PIL import Image

from clipforge.encoders.images import ImageDecodeError
from clipforge.encoders.text import clean_caption
from clipforge.index import factory as fx
from clipforge.index import refine as rx
from clipforge.index import store
from clipforge.index.core import now, read_faiss
from clipforge.index.meta import MetaWriter, check_extra, encodable, row_for
from clipforge.index.sources import PIL_EXT
from clipforge.index.types import IndexError_, Item

if TYPE_CHECKING:
    from clipforge.index.core import Index

MAX_ADD = 10_000  # items per add call: larger batches belong in `index build`


def _copies(index: Index, st: Any) -> tuple[faiss.Index, faiss.Index]:
    """In-RAM copies of the live version's image and caption indexes for a writer to change. A memory-mapped
    index serialises as a reference to its file, so its copy is read from the file instead."""
    if index.mmap:
        vdir = index.path / st.manifest["version_dir"]
        return read_faiss(vdir / "images.faiss"), read_faiss(vdir / "captions.faiss")
    return tuple(faiss.deserialize_index(faiss.serialize_index(x)) for x in (st.images, st.captions))


def store_image(root: Path, data: bytes) -> str:
    """Write image bytes under DIR/images/ (content addressed, atomic); returns the path relative to DIR."""
    with Image.open(io.BytesIO(data)) as im:
        ext = PIL_EXT.get(im.format or "", "bin")
    digest = hashlib.sha256(data).hexdigest()
    rel = Path("images") / digest[:2] / f"{digest}.{ext}"
    path = root / rel
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        store.atomic_write(path, data)
    return str(rel)


def _check_items(bundle: Any, items: list) -> list[tuple[bytes, str | None, dict, Any, tuple[int, int]]]:
    if not isinstance(items, list | tuple) or not items:
        raise IndexError_("nothing to add: give a non-empty list of (image bytes, caption, extra)")
    if len(items) > MAX_ADD:
        raise IndexError_(f"{len(items)} items in one add is over the limit of {MAX_ADD}; use index build")
    out = []
    for n, entry in enumerate(items):
        if not isinstance(entry, list | tuple) or len(entry) != 3:
            raise IndexError_(f"item {n}: expected (image bytes, caption, extra)")
        data, caption, extra = entry
        if not isinstance(data, bytes | bytearray):
            raise IndexError_(f"item {n}: image must be bytes, got {type(data).__name__}")
        if caption is not None and not isinstance(caption, str):
            raise IndexError_(f"item {n}: caption must be a string or None")
        if extra is not None and not isinstance(extra, dict):
            raise IndexError_(f"item {n}: extra must be a dict or None")
        check_extra(extra or {}, f"item {n}: metadata")
        if caption is not None and not encodable(caption):
            raise IndexError_(f"item {n}: caption is not valid Unicode (a lone surrogate)")
        try:
            image, size = bundle.decode_image(bytes(data))
        except ImageDecodeError as exn:
            raise IndexError_(f"item {n}: {exn}") from exn
        caption = clean_caption(caption)
        out.append((bytes(data), caption, dict(extra or {}), image, size))
    return out


def add_items(index: Index, bundle: Any, items: list) -> list[int]:
    checked = _check_items(bundle, items)  # every image decodes before anything is written
    pixels = bundle.preprocess([im for *_, im, _ in checked])
    image_features = bundle.encode_images(pixels).numpy()  # [n, D]
    root = index.path
    with store.writer_lock(root):
        st = index._current()
        manifest = st.manifest
        first = int(manifest["next_id"])
        new: list[Item] = []
        for j, (data, caption, extra, _, (width, height)) in enumerate(checked):
            rel = store_image(root, data)
            new.append(Item(first + j, Path(rel).stem[:16], caption, "add", None, rel, width, height, extra))
        ids = np.array([it.id for it in new], np.int64)
        captioned = [it for it in new if it.caption]
        caption_ids = np.array([it.id for it in captioned], np.int64)
        text_features = np.zeros((0, image_features.shape[1]), np.float32)
        images, captions = _copies(index, st)
        fx.add_chunks(images, [(ids, image_features)])
        if captioned:
            text_features = bundle.encode_texts([it.caption for it in captioned]).numpy()
            fx.add_chunks(captions, [(caption_ids, text_features)])
        counts = {**manifest["counts"], "items": manifest["counts"]["items"] + len(new),
                  "images": int(images.ntotal), "captions": int(captions.ntotal)}  # fmt: skip
        added = {"images": (ids, image_features), "captions": (caption_ids, text_features)}
        _commit(index, st, images, captions, lambda w: w.insert(row_for(it) for it in new), counts,
                next_id=first + len(new), change={"added": len(new)}, added=(first, len(new), added))  # fmt: skip
    return ids.tolist()


def remove_items(index: Index, ids: list[int]) -> int:
    if not isinstance(ids, list | tuple) or not ids:
        raise IndexError_("nothing to remove: give a non-empty list of ids")
    if any(isinstance(i, bool) or not isinstance(i, int | np.integer) for i in ids):
        raise IndexError_("ids are integers")
    wanted = sorted({int(i) for i in ids})
    root = index.path
    with store.writer_lock(root):
        st = index._current()
        found = st.meta.get_many(wanted)
        unknown = [i for i in wanted if i not in found]
        if unknown:
            more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
            raise IndexError_(f"unknown id(s) {unknown[:5]}{more}; nothing was removed")
        manifest = st.manifest
        images, captions = _copies(index, st)
        sections = {name: dict(manifest[name]) for name in ("images", "captions")}
        with_caption = np.array([i for i in wanted if found[i].caption], np.int64)
        for name, index_, drop in (
            ("images", images, np.array(wanted, np.int64)),
            ("captions", captions, with_caption),
        ):
            if len(drop) and not fx.remove(index_, drop):
                sections[name]["tombstones"] = int(sections[name].get("tombstones", 0)) + len(drop)  # e.g. HNSW
        counts = {**manifest["counts"], "items": manifest["counts"]["items"] - len(wanted),
                  "images": manifest["counts"]["images"] - len(wanted),
                  "captions": manifest["counts"]["captions"] - len(with_caption)}  # fmt: skip
        _commit(index, st, images, captions, lambda w: w.delete(wanted), counts, next_id=int(manifest["next_id"]),
                change={"removed": len(wanted)}, sections=sections)  # fmt: skip
    return len(wanted)


def _commit(index: Index, st: Any, images: faiss.Index, captions: faiss.Index, edit: Any, counts: dict,
            *, next_id: int, change: dict, sections: dict | None = None, added: tuple | None = None) -> None:  # fmt: skip
    """Write the next version: meta edited by `edit`, both FAISS indexes, the re-rank segments carried
    over (hard links) plus one for `added` = (first id, rows, {name: (ids, vectors)}); then publish it."""
    root = index.path
    manifest = st.manifest
    number = int(manifest["version"]) + 1
    sections = {name: dict(manifest[name]) for name in ("images", "captions")} | (sections or {})
    with store.new_version(root, number) as vdir:
        for name, section in sections.items():
            if section.get("refine"):
                rx.carry(root / manifest["version_dir"], vdir, section["refine"])
                if added is not None:
                    first, rows, vectors = added
                    section["refine"] = rx.append(vdir, name, section["refine"], first, rows,
                                                  int(manifest["dim"]), *vectors[name])  # fmt: skip
        shutil.copyfile(root / manifest["version_dir"] / "meta.sqlite", vdir / "meta.sqlite")
        writer = MetaWriter(vdir / "meta.sqlite")
        edit(writer)
        writer.close()
        fx.write(images, str(vdir / "images.faiss"))
        fx.write(captions, str(vdir / "captions.faiss"))
    new = {**manifest, **sections, "version": number, "version_dir": store.version_name(number),
           "counts": counts, "next_id": next_id}  # fmt: skip
    for name, idx in (("images", images), ("captions", captions)):
        new[name] = {**new[name], "count": int(idx.ntotal)}
    new["provenance"] = {**manifest["provenance"], "updated": now(), "last_change": change}
    store.publish(root, new)
    index._swap()
    store.sweep(root)
