"""Adds and removes: each one writes a complete new version directory, then swaps the pointer.

The live version is never modified, so a crash at any point leaves it readable, and a search running
during an add keeps using the version it loaded. FAISS indexes are copied in memory (serialise +
deserialise), updated, and written into the new version; meta.sqlite is copied and edited.

These functions take the live `State` (read by the caller under the writer lock), publish the next
version and return its manifest; `Index` then loads it. They never encode: vectors come in ready.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from PIL import Image, UnidentifiedImageError

from clipforge.encoders.text import clean_caption
from clipforge.index import faiss_index, versions
from clipforge.index import refine as rx
from clipforge.index.meta import MetaWriter, check_metadata, encodable, row_for
from clipforge.index.sources import PIL_EXT
from clipforge.index.state import State, writable_copies
from clipforge.index.types import IndexInputError, Item, UnknownIdError

MAX_ADD = 10_000  # items per add call: larger batches belong in `index build`
NewItem = tuple[bytes, str | None, dict[str, Any]]  # (image bytes, caption, extra metadata)


def check_items(items: Any) -> list[NewItem]:
    """(image bytes, caption, extra) entries, captions cleaned; a one-line error naming the first bad one."""
    if not isinstance(items, list | tuple) or not items:
        raise IndexInputError("nothing to add: give a non-empty list of (image bytes, caption, extra)")
    if len(items) > MAX_ADD:
        raise IndexInputError(f"{len(items)} items in one add is over the limit of {MAX_ADD}; use index build")
    out: list[NewItem] = []
    for n, entry in enumerate(items):
        if not isinstance(entry, list | tuple) or len(entry) != 3:
            raise IndexInputError(f"item {n}: expected (image bytes, caption, extra)")
        data, caption, extra = entry
        if not isinstance(data, bytes | bytearray):
            raise IndexInputError(f"item {n}: image must be bytes, got {type(data).__name__}")
        if caption is not None and not isinstance(caption, str):
            raise IndexInputError(f"item {n}: caption must be a string or None")
        if extra is not None and not isinstance(extra, dict):
            raise IndexInputError(f"item {n}: extra must be a dict or None")
        check_metadata(extra or {}, f"item {n}: metadata")
        if caption is not None and not encodable(caption):
            raise IndexInputError(f"item {n}: caption is not valid Unicode (a lone surrogate)")
        out.append((bytes(data), clean_caption(caption), dict(extra or {})))
    return out


def image_header(data: bytes, n: int) -> tuple[str, int, int]:
    """(file extension, displayed width, height) from the image's header alone: the pixels were decoded
    once already, to encode them. A quarter-turn EXIF orientation swaps width and height."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            # the base method: PNG's own override decodes the whole image to look for a late eXIf chunk
            if Image.Image.getexif(im).get(0x0112, 1) in (5, 6, 7, 8):
                width, height = height, width
            return PIL_EXT.get(im.format or "", "bin"), width, height
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exn:
        raise IndexInputError(f"item {n}: not a readable image ({type(exn).__name__})") from exn


def store_image(root: Path, data: bytes, ext: str) -> str:
    """Write image bytes under DIR/images/ (content addressed, atomic); returns the path relative to DIR."""
    digest = hashlib.sha256(data).hexdigest()
    rel = Path("images") / digest[:2] / f"{digest}.{ext}"
    path = root / rel
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        versions.atomic_write(path, data)
    return str(rel)


def check_features(features: Any, rows: int, dim: int, what: str) -> np.ndarray:
    """[rows, dim] finite float32, or a one-line error."""
    try:
        out = np.ascontiguousarray(features, dtype=np.float32)
    except (TypeError, ValueError) as exn:
        raise IndexInputError(f"{what} must be numeric: {exn}") from exn
    if out.ndim != 2 or out.shape != (rows, dim):
        raise IndexInputError(f"{what} have shape {list(out.shape)}, expected [{rows}, {dim}]")
    if not np.isfinite(out).all():
        raise IndexInputError(f"{what} contain NaN or infinity")
    return out


def add_vectors(
    root: Path, st: State, items: list[NewItem], image_features: Any, caption_features: Any, *, mmap: bool
) -> dict[str, Any]:
    """Publish the version after `st` with `items` added (checked by `check_items`) and their vectors:
    `image_features` [n, D] one row per item, `caption_features` [m, D] one row per item with a caption,
    in order. Returns the new manifest."""
    manifest = st.manifest
    dim = int(manifest["dim"])
    captioned = [j for j, (_, caption, _) in enumerate(items) if caption]
    image_features = check_features(image_features, len(items), dim, "image features")
    text_features = check_features(caption_features, len(captioned), dim, "caption features")
    headers = [image_header(data, n) for n, (data, _, _) in enumerate(items)]  # all checked before any write
    first = int(manifest["next_id"])
    new: list[Item] = []
    for j, ((data, caption, extra), (ext, width, height)) in enumerate(zip(items, headers, strict=True)):
        rel = store_image(root, data, ext)
        new.append(Item(first + j, Path(rel).stem[:16], caption, "add", None, rel, width, height, extra))
    ids = np.array([it.id for it in new], np.int64)
    caption_ids = ids[captioned]
    images, captions = writable_copies(root, st, mmap)
    faiss_index.add_chunks(images, [(ids, image_features)])
    faiss_index.add_chunks(captions, [(caption_ids, text_features)])
    counts = {  # not the FAISS indexes' ntotal: an index that cannot remove (HNSW) still holds removed vectors
        **manifest["counts"],
        "items": manifest["counts"]["items"] + len(new),
        "images": manifest["counts"]["images"] + len(new),
        "captions": manifest["counts"]["captions"] + len(caption_ids),
    }
    added = {"images": (ids, image_features), "captions": (caption_ids, text_features)}
    return _commit(
        root,
        st,
        images,
        captions,
        lambda w: w.insert(row_for(it) for it in new),
        counts,
        next_id=first + len(new),
        change={"added": len(new)},
        added=(first, len(new), added),
    )


def check_ids(ids: Any) -> list[int]:
    if not isinstance(ids, list | tuple) or not ids:
        raise IndexInputError("nothing to remove: give a non-empty list of ids")
    if any(isinstance(i, bool) or not isinstance(i, int | np.integer) for i in ids):
        raise IndexInputError("ids are integers")
    return sorted({int(i) for i in ids})


def remove_ids(root: Path, st: State, wanted: list[int], *, mmap: bool) -> dict[str, Any]:
    """Publish the version after `st` without the items `wanted` (from `check_ids`); unknown ids are an
    error (UnknownIdError) and nothing changes. Returns the new manifest."""
    found = st.meta.get_many(wanted)
    unknown = [i for i in wanted if i not in found]
    if unknown:
        more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise UnknownIdError(f"unknown id(s) {unknown[:5]}{more}; nothing was removed")
    manifest = st.manifest
    images, captions = writable_copies(root, st, mmap)
    sections = {name: dict(manifest[name]) for name in ("images", "captions")}
    with_caption = np.array([i for i in wanted if found[i].caption], np.int64)
    for name, index_, drop in (
        ("images", images, np.array(wanted, np.int64)),
        ("captions", captions, with_caption),
    ):
        if len(drop) and not faiss_index.remove(index_, drop):
            sections[name]["tombstones"] = int(sections[name].get("tombstones", 0)) + len(drop)  # e.g. HNSW
    counts = {
        **manifest["counts"],
        "items": manifest["counts"]["items"] - len(wanted),
        "images": manifest["counts"]["images"] - len(wanted),
        "captions": manifest["counts"]["captions"] - len(with_caption),
    }
    return _commit(
        root,
        st,
        images,
        captions,
        lambda w: w.delete(wanted),
        counts,
        next_id=int(manifest["next_id"]),
        change={"removed": len(wanted)},
        sections=sections,
    )


def _commit(
    root: Path,
    st: State,
    images: faiss.Index,
    captions: faiss.Index,
    edit: Callable[[MetaWriter], None],
    counts: dict,
    *,
    next_id: int,
    change: dict,
    sections: dict | None = None,
    added: tuple | None = None,
) -> dict[str, Any]:
    """Write the next version: meta edited by `edit`, both FAISS indexes, the re-rank segments carried
    over (hard links) plus one for `added` = (first id, rows, {name: (ids, vectors)}); then publish it."""
    manifest = st.manifest
    number = int(manifest["version"]) + 1
    sections = {name: dict(manifest[name]) for name in ("images", "captions")} | (sections or {})
    with versions.new_version(root, number) as vdir:
        for name, section in sections.items():
            if section.get("refine"):
                rx.carry(root / manifest["version_dir"], vdir, section["refine"])
                if added is not None:
                    first, rows, vectors = added
                    section["refine"] = rx.append(
                        vdir, name, section["refine"], first, rows, int(manifest["dim"]), *vectors[name]
                    )
        shutil.copyfile(root / manifest["version_dir"] / "meta.sqlite", vdir / "meta.sqlite")
        writer = MetaWriter(vdir / "meta.sqlite")
        edit(writer)
        writer.close()
        faiss_index.write(images, str(vdir / "images.faiss"))
        faiss_index.write(captions, str(vdir / "captions.faiss"))
    new = {
        **manifest,
        **sections,
        "version": number,
        "version_dir": versions.version_name(number),
        "counts": counts,
        "next_id": next_id,
    }
    for name, idx in (("images", images), ("captions", captions)):
        new[name] = {**new[name], "count": int(idx.ntotal) - int(new[name].get("tombstones", 0))}  # live vectors
    new["provenance"] = {**manifest["provenance"], "updated": versions.now(), "last_change": change}
    versions.publish(root, new)
    return new
