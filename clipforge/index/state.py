"""One loaded version of an index: its manifest, both FAISS indexes, its metadata table, re-rank copies.

A `State` is immutable once loaded: searches read it, updates read it and publish a successor, and
`Index` swaps in the successor when the pointer changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss

from clipforge.index import refine as rx
from clipforge.index import tuning, versions
from clipforge.index.meta import MetaReader
from clipforge.index.types import IndexUnreadableError


@dataclass
class State:
    """One loaded, immutable version: what a search works on from start to end."""

    manifest: dict[str, Any]
    images: faiss.Index
    captions: faiss.Index
    meta: MetaReader
    stamp: tuple[int, int]
    vectors: dict[str, rx.Vectors | None] = field(default_factory=dict)  # float16 re-rank copies, if any


def read_faiss(path: Path, mmap: bool = False) -> faiss.Index:
    """Load an index file; with `mmap` an IVF's inverted lists stay in the file and are paged in by the OS
    as searches touch them (read-only: updates work on their own in-RAM copy)."""
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    try:
        return faiss.read_index(str(path), flags)
    except RuntimeError as exn:
        raise IndexUnreadableError(
            f"{path} cannot be read ({str(exn).splitlines()[0][:120]}): truncated or corrupt"
        ) from exn


def load_state(root: Path, mmap: bool = False) -> State:
    """The live version of the index at `root`, every file checked against the manifest."""
    stamp = versions.pointer_stamp(root)
    manifest = versions.read_manifest(root)
    vdir = versions.verify_files(root, manifest)
    images, captions = read_faiss(vdir / "images.faiss", mmap), read_faiss(vdir / "captions.faiss", mmap)
    for index, name in ((images, "images"), (captions, "captions")):
        if index.d != manifest["dim"]:
            raise IndexUnreadableError(
                f"{vdir / name}.faiss has dimension {index.d}, the manifest says {manifest['dim']}"
            )
        tuning.apply_search_params(index, manifest[name].get("search_params", {}))
    dim = int(manifest["dim"])
    vectors = {name: rx.Vectors.open(vdir, manifest[name], dim) for name in ("images", "captions")}
    return State(manifest, images, captions, MetaReader(vdir / "meta.sqlite"), stamp, vectors)


def writable_copies(root: Path, st: State, mmap: bool) -> tuple[faiss.Index, faiss.Index]:
    """In-RAM copies of a version's image and caption indexes for a writer to change. A memory-mapped
    index serialises as a reference to its file, so its copy is read from the file instead."""
    if mmap:
        vdir = root / st.manifest["version_dir"]
        return read_faiss(vdir / "images.faiss"), read_faiss(vdir / "captions.faiss")
    images, captions = (faiss.deserialize_index(faiss.serialize_index(x)) for x in (st.images, st.captions))
    return images, captions
