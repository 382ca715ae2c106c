"""`Index`: open, search and update an index directory (see store.py for the on-disk layout)."""

from __future__ import annotations

import datetime as dt
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from clipforge.index import factory as fx
from clipforge.index import refine as rx
from clipforge.index import search as sx
from clipforge.index import store
from clipforge.index.build import build_from_parts, embed_to_parts
from clipforge.index.meta import MetaReader
from clipforge.index.sources import MemberReader, read_item_bytes
from clipforge.index.types import Hit, IndexError_, IndexMismatchError, Item


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
        raise IndexError_(f"{path} cannot be read ({str(exn).splitlines()[0][:120]}): truncated or corrupt") from exn


def load_state(root: Path, mmap: bool = False) -> State:
    stamp = store.pointer_stamp(root)
    manifest = store.read_manifest(root)
    vdir = store.verify_files(root, manifest)
    images, captions = read_faiss(vdir / "images.faiss", mmap), read_faiss(vdir / "captions.faiss", mmap)
    for index, name in ((images, "images"), (captions, "captions")):
        if index.d != manifest["dim"]:
            raise IndexError_(f"{vdir / name}.faiss has dimension {index.d}, the manifest says {manifest['dim']}")
        fx.apply_search_params(index, manifest[name].get("search_params", {}))
    dim = int(manifest["dim"])
    vectors = {name: rx.Vectors.open(vdir, manifest[name], dim) for name in ("images", "captions")}
    return State(manifest, images, captions, MetaReader(vdir / "meta.sqlite"), stamp, vectors)


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def check_bundle(bundle: Any, fingerprint: str, dim: int, root: Path) -> None:
    if bundle is None:
        raise IndexError_("a model bundle is needed for this operation")
    if bundle.fingerprint != fingerprint:
        raise IndexMismatchError(
            f"bundle {getattr(bundle, 'path', '?')} (fingerprint {bundle.fingerprint[:12]}) is not the one index "
            f"{root} was built with (fingerprint {fingerprint[:12]})"
        )
    if bundle.embed_dim != dim:
        raise IndexMismatchError(f"bundle embeds in {bundle.embed_dim} dimensions, index {root} has {dim}")


class Index:
    """A versioned FAISS + SQLite index. Thread-safe for searches; updates are serialised by a file lock.

    Every call first checks (one stat) whether manifest.json was replaced, by this or another process,
    and if so switches to the new version; a search in flight keeps the version it started with."""

    def __init__(self, path: Path, state: State, mmap: bool = False) -> None:
        self.path = path
        self.mmap = mmap
        self._state = state
        self._reload = threading.Lock()
        self._members = MemberReader()

    # ---- build / open -------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        bundle: Any,
        data: str,
        out: str | Path,
        *,
        factory: str | None = None,
        memory_budget_mb: float | None = None,
        batch_size: int = 64,
        caption_key: str = "txt",
        progress: bool = True,
        refine: bool = True,
    ) -> Index:
        """Embed `data` (a shard spec or an image folder) with `bundle` and write a new index to `out`.
        `refine`: a compressed index keeps float16 copies of the vectors on disk to re-rank its candidates
        exactly (index/refine.py); off, it is only the codes in RAM."""
        if bundle is None:
            raise IndexError_("index build needs a model bundle")
        if not str(data).strip():
            raise IndexError_("no data given")
        root = Path(out)
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise IndexError_(f"{root} already exists and is not empty; use `index add` or another directory")
        if memory_budget_mb is not None and memory_budget_mb <= 0:
            raise IndexError_(f"memory budget must be positive, got {memory_budget_mb}")
        t0 = time.perf_counter()
        root.mkdir(parents=True, exist_ok=True)
        try:
            with store.writer_lock(root), store.new_version(root, 1) as vdir:
                work = vdir / "_parts"
                embed_to_parts(bundle, str(data), work, batch_size=batch_size, caption_key=caption_key,
                               progress=progress)  # fmt: skip
                sections = build_from_parts([work], vdir, factory=factory, memory_budget_mb=memory_budget_mb,
                                            refine=refine)  # fmt: skip
                shutil.rmtree(work)
            store.publish(root, new_manifest(bundle, sections, time.perf_counter() - t0))
        except BaseException:
            if not (root / store.MANIFEST).exists():
                shutil.rmtree(root, ignore_errors=True)  # nothing half-built is left behind
            raise
        return cls.open(root)

    @classmethod
    def merge_parts(
        cls,
        bundle: Any,
        parts: list[str | Path],
        out: str | Path,
        *,
        factory: str | None = None,
        memory_budget_mb: float | None = None,
        refine: bool = True,
    ) -> Index:
        """A new index from parts directories written by `index.build.embed_to_parts` (one per process)."""
        root = Path(out)
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise IndexError_(f"{root} already exists and is not empty")
        t0 = time.perf_counter()
        root.mkdir(parents=True, exist_ok=True)
        try:
            with store.writer_lock(root), store.new_version(root, 1) as vdir:
                sections = build_from_parts(parts, vdir, factory=factory, memory_budget_mb=memory_budget_mb,
                                            refine=refine)  # fmt: skip
            if sections["fingerprint"] != bundle.fingerprint:
                raise IndexMismatchError("the parts were embedded with another bundle than the one given")
            store.publish(root, new_manifest(bundle, sections, time.perf_counter() - t0))
        except BaseException:
            if not (root / store.MANIFEST).exists():
                shutil.rmtree(root, ignore_errors=True)
            raise
        return cls.open(root)

    @classmethod
    def open(cls, path: str | Path, bundle: Any = None, mmap: bool = False) -> Index:
        """`mmap`: memory-map the inverted lists instead of reading them into RAM, for indexes larger
        than memory (or many processes sharing one copy through the page cache)."""
        root = Path(path)
        manifest = store.read_manifest(root)
        if bundle is not None:
            check_bundle(bundle, manifest["fingerprint"], int(manifest["dim"]), root)
        return cls(root, load_state(root, mmap), mmap)

    def close(self) -> None:
        self._state.meta.close()

    def _current(self) -> State:
        state = self._state
        try:
            stamp = store.pointer_stamp(self.path)
        except FileNotFoundError:
            return state  # directory moved away under us: keep serving what is loaded
        if stamp != state.stamp:
            with self._reload:
                if self._state.stamp != stamp:
                    self._state = load_state(self.path, self.mmap)
                state = self._state
        return state

    # ---- properties ------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self._current().manifest["dim"])

    @property
    def fingerprint(self) -> str:
        return str(self._current().manifest["fingerprint"])

    @property
    def manifest(self) -> dict[str, Any]:
        return self._current().manifest

    def __len__(self) -> int:
        return int(self._current().manifest["counts"]["items"])

    def info(self) -> dict[str, Any]:
        st = self._current()
        live = {"items": st.meta.count(), "images": int(st.images.ntotal), "captions": int(st.captions.ntotal)}
        return {**st.manifest, "path": str(self.path), "live": live}

    # ---- search ----------------------------------------------------------------------------------------
    def search_vectors(
        self,
        vectors: np.ndarray,
        k: int = 10,
        *,
        target: str = "images",
        filters: dict | None = None,
        threshold: float | None = None,
        offset: int = 0,
        collapse: float | None = None,
        exclude: set[int] | None = None,
    ) -> list[list[Hit]]:
        """Nearest items per query row; `target` "images" compares with image vectors, "captions" with
        caption vectors. `filters` {field: value or [values]} match metadata columns or extra fields."""
        sx.check_paging(k, offset, threshold, collapse, target)
        st = self._current()
        queries = sx.check_query(vectors, int(st.manifest["dim"]))
        return sx.search(st, queries, int(k), target=target, filters=filters, threshold=threshold,
                         offset=int(offset), collapse=collapse, exclude=exclude)  # fmt: skip

    def search_text(self, bundle: Any, text: str, k: int = 10, **kw: Any) -> list[Hit]:
        if not isinstance(text, str) or not text.strip():
            raise IndexError_("query text is empty")
        self._check(bundle)
        return self.search_vectors(bundle.encode_texts([text]).numpy(), k, **kw)[0]

    def search_image(self, bundle: Any, image: Any, k: int = 10, **kw: Any) -> list[Hit]:
        self._check(bundle)
        if isinstance(image, bytes | bytearray | str | Path):
            image = bundle.load_image(image)
        return self.search_vectors(bundle.encode_images(bundle.preprocess([image])).numpy(), k, **kw)[0]

    def search_id(self, id: int, k: int = 10, **kw: Any) -> list[Hit]:
        """Items most like item `id` (its stored image vector), the item itself left out."""
        st = self._current()
        self.get(id)
        try:
            vector = sx.stored_vectors(st, [int(id)])[0]
        except RuntimeError as exn:
            raise IndexError_(f"item {id} has no stored image vector") from exn
        exclude = set(kw.pop("exclude", None) or ()) | {int(id)}
        return self.search_vectors(vector[None, :], k, exclude=exclude, **kw)[0]

    def image_vectors(self, ids: list[int]) -> np.ndarray:
        """[len(ids), D] float32 stored image vectors of items, as the index keeps them (exact for `Flat`;
        the float16 re-rank copies or the decoded codes otherwise: near, not exactly, unit length).
        Unknown ids raise IndexError_; nothing is encoded."""
        st = self._current()
        wanted = [int(i) for i in ids]
        missing = sorted(set(wanted) - st.meta.existing(wanted))
        if missing:
            raise IndexError_(f"unknown id {missing[0]}" if len(missing) == 1 else f"unknown ids {missing[:10]}")
        try:
            return np.asarray(sx.stored_vectors(st, wanted), dtype=np.float32)
        except RuntimeError as exn:
            raise IndexError_("an item has no stored image vector") from exn

    def get(self, id: int) -> Item:
        if isinstance(id, bool) or not isinstance(id, int | np.integer):
            raise IndexError_(f"ids are integers, got {id!r}")
        item = self._current().meta.get_many([int(id)]).get(int(id))
        if item is None:
            raise IndexError_(f"unknown id {id}")
        return item

    def read_image_bytes(self, id: int) -> tuple[bytes, str]:
        return read_item_bytes(self.path, self.get(id), self._members)

    # ---- updates ---------------------------------------------------------------------------------------
    def add(self, bundle: Any, items: list[tuple[bytes, str | None, dict]]) -> list[int]:
        """Embed and add (image bytes, caption, extra) items as one atomic new version; returns their ids."""
        from clipforge.index.update import add_items

        self._check(bundle)
        return add_items(self, bundle, items)

    def remove(self, ids: list[int]) -> int:
        """Remove items by id as one atomic new version; unknown ids are an error and nothing changes."""
        from clipforge.index.update import remove_items

        return remove_items(self, ids)

    def _check(self, bundle: Any) -> None:
        m = self._current().manifest
        check_bundle(bundle, m["fingerprint"], int(m["dim"]), self.path)

    def _swap(self) -> None:
        """Load the version just published (called by updates, with the writer lock held)."""
        with self._reload:
            self._state = load_state(self.path, self.mmap)


def new_manifest(bundle: Any, sections: dict[str, Any], seconds: float) -> dict[str, Any]:
    from clipforge.encoders.bundle import code_version

    return {
        "format": store.FORMAT,
        "version": 1,
        "version_dir": store.version_name(1),
        "fingerprint": sections["fingerprint"],
        "dim": sections["dim"],
        "metric": "inner_product",
        "normalized": True,
        "counts": sections["counts"],
        "next_id": sections["next_id"],
        "images": sections["images"],
        "captions": sections["captions"],
        "bundle": {
            "path": str(getattr(bundle, "path", "")),
            "arch": bundle.meta.get("arch"),
            "fingerprint": bundle.fingerprint,
        },  # fmt: skip
        "provenance": {
            "created": now(),
            "updated": now(),
            "code_version": code_version(),
            "faiss_version": faiss.__version__,
            "build_seconds": round(seconds, 3),
            "embedding": sections["embedding"],
        },
    }
