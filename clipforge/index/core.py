"""`Index`: open, search and update an index directory (see versions.py for the on-disk layout)."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from clipforge.encoders.images import ImageDecodeError
from clipforge.index import faiss_index, versions
from clipforge.index import search as sx
from clipforge.index import update as ux
from clipforge.index.build import build_from_parts, embed_to_parts
from clipforge.index.sources import MemberReader, read_item_bytes
from clipforge.index.state import State, load_state
from clipforge.index.types import Hit, IndexInputError, IndexMismatchError, Item, UnknownIdError

log = logging.getLogger("clipforge.index")


def check_bundle(bundle: Any, fingerprint: str, dim: int, root: Path) -> None:
    if bundle is None:
        raise IndexInputError("a model bundle is needed for this operation")
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
    and if so switches to the new version; a search in flight keeps the version it started with. An index
    opened with a bundle only switches to versions of that bundle: one rebuilt with another is refused (a
    warning is logged), searches keep the version loaded, and updates raise IndexMismatchError."""

    def __init__(self, path: Path, state: State, mmap: bool = False, expect: tuple[str, int] | None = None) -> None:
        self.path = path
        self.mmap = mmap
        self._state = state
        self._reload = threading.Lock()
        self._members = MemberReader()
        self._expect = expect  # (fingerprint, dim) of the bundle it was opened with
        self._refused: tuple[int, int] | None = None  # pointer stamp of a version refused for not matching it

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
            raise IndexInputError("index build needs a model bundle")
        if not str(data).strip():
            raise IndexInputError("no data given")
        root = Path(out)
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise IndexInputError(f"{root} already exists and is not empty; use `index add` or another directory")
        if memory_budget_mb is not None and memory_budget_mb <= 0:
            raise IndexInputError(f"memory budget must be positive, got {memory_budget_mb}")
        if factory is not None:
            faiss_index.check_factory(factory, int(bundle.embed_dim))  # before hours of embedding
        t0 = time.perf_counter()
        root.mkdir(parents=True, exist_ok=True)
        try:
            with versions.writer_lock(root), versions.new_version(root, 1) as vdir:
                work = vdir / "_parts"
                embed_to_parts(
                    bundle, str(data), work, batch_size=batch_size, caption_key=caption_key, progress=progress
                )
                sections = build_from_parts(
                    [work], vdir, factory=factory, memory_budget_mb=memory_budget_mb, refine=refine
                )
                shutil.rmtree(work)
            versions.publish(root, versions.first_manifest(bundle, sections, time.perf_counter() - t0))
        except BaseException:
            if not (root / versions.MANIFEST).exists():
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
        if bundle is None:
            raise IndexInputError("index merge needs the model bundle the parts were embedded with")
        root = Path(out)
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise IndexInputError(f"{root} already exists and is not empty")
        t0 = time.perf_counter()
        root.mkdir(parents=True, exist_ok=True)
        try:
            with versions.writer_lock(root), versions.new_version(root, 1) as vdir:
                sections = build_from_parts(
                    parts,
                    vdir,
                    factory=factory,
                    memory_budget_mb=memory_budget_mb,
                    refine=refine,
                    fingerprint=bundle.fingerprint,
                )
            versions.publish(root, versions.first_manifest(bundle, sections, time.perf_counter() - t0))
        except BaseException:
            if not (root / versions.MANIFEST).exists():
                shutil.rmtree(root, ignore_errors=True)
            raise
        return cls.open(root)

    @classmethod
    def open(cls, path: str | Path, bundle: Any = None, mmap: bool = False) -> Index:
        """`mmap`: memory-map the inverted lists instead of reading them into RAM, for indexes larger
        than memory (or many processes sharing one copy through the page cache)."""
        root = Path(path)
        manifest = versions.read_manifest(root)
        if bundle is None:
            return cls(root, load_state(root, mmap), mmap)
        check_bundle(bundle, manifest["fingerprint"], int(manifest["dim"]), root)
        return cls(root, load_state(root, mmap), mmap, expect=(bundle.fingerprint, int(bundle.embed_dim)))

    def close(self) -> None:
        self._state.meta.close()

    def _current(self) -> State:
        state = self._state
        try:
            stamp = versions.pointer_stamp(self.path)
        except FileNotFoundError:
            return state  # directory moved away under us: keep serving what is loaded
        if stamp not in (state.stamp, self._refused):
            with self._reload:
                if stamp not in (self._state.stamp, self._refused):
                    self._switch(load_state(self.path, self.mmap))
                state = self._state
        return state

    def _switch(self, new: State) -> None:
        """Make `new` the loaded version, unless it belongs to another bundle than the one opened with."""
        m = new.manifest
        if self._expect is not None and (m["fingerprint"], int(m["dim"])) != self._expect:
            log.warning(
                "index %s was replaced by one of another bundle (fingerprint %s, dimension %s; opened with %s, %s): "
                "still serving version %s, updates are refused",
                self.path,
                str(m["fingerprint"])[:12],
                m["dim"],
                self._expect[0][:12],
                self._expect[1],
                self._state.manifest["version"],
            )
            self._refused = new.stamp
            new.meta.close()
            return
        self._state = new

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
        live = {"items": st.meta.count()}
        for name, idx in (("images", st.images), ("captions", st.captions)):  # removed vectors an HNSW still holds
            live[name] = int(idx.ntotal) - int(st.manifest[name].get("tombstones", 0))
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
        return sx.search(
            st,
            queries,
            int(k),
            target=target,
            filters=filters,
            threshold=threshold,
            offset=int(offset),
            collapse=collapse,
            exclude=exclude,
        )

    def search_text(self, bundle: Any, text: str, k: int = 10, **kw: Any) -> list[Hit]:
        if not isinstance(text, str) or not text.strip():
            raise IndexInputError("query text is empty")
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
            raise IndexInputError(f"item {id} has no stored image vector") from exn
        exclude = set(kw.pop("exclude", None) or ()) | {int(id)}
        return self.search_vectors(vector[None, :], k, exclude=exclude, **kw)[0]

    def image_vectors(self, ids: list[int]) -> np.ndarray:
        """[len(ids), D] float32 stored image vectors of items, as the index keeps them (exact for `Flat`;
        the float16 re-rank copies or the decoded codes otherwise: near, not exactly, unit length).
        Unknown ids raise IndexInputError; nothing is encoded."""
        st = self._current()
        wanted = [int(i) for i in ids]
        missing = sorted(set(wanted) - st.meta.existing(wanted))
        if missing:
            raise UnknownIdError(f"unknown id {missing[0]}" if len(missing) == 1 else f"unknown ids {missing[:10]}")
        try:
            return np.asarray(sx.stored_vectors(st, wanted), dtype=np.float32)
        except RuntimeError as exn:
            raise IndexInputError("an item has no stored image vector") from exn

    def get(self, id: int) -> Item:
        if isinstance(id, bool) or not isinstance(id, int | np.integer):
            raise IndexInputError(f"ids are integers, got {id!r}")
        item = self._current().meta.get_many([int(id)]).get(int(id))
        if item is None:
            raise UnknownIdError(f"unknown id {id}")
        return item

    def read_image_bytes(self, id: int) -> tuple[bytes, str]:
        return read_item_bytes(self.path, self.get(id), self._members)

    # ---- updates ----------------------------------------------------------------------------------------
    def add(self, bundle: Any, items: list[tuple[bytes, str | None, dict]]) -> list[int]:
        """Embed (image bytes, caption, extra) items with `bundle` and add them as one atomic new version;
        returns their ids. Every image decodes before anything is written."""
        self._check(bundle)
        checked = ux.check_items(items)
        images = []
        for n, (data, _, _) in enumerate(checked):
            try:
                images.append(bundle.decode_image(data)[0])
            except ImageDecodeError as exn:
                raise IndexInputError(f"item {n}: {exn}", item=n, reason=str(exn)) from exn
        image_features = bundle.encode_images(bundle.preprocess(images)).numpy()  # [n, D]
        captions = [caption for _, caption, _ in checked if caption]
        caption_features = (
            bundle.encode_texts(captions).numpy() if captions else np.zeros((0, image_features.shape[1]), np.float32)
        )  # [m, D]
        return self.add_vectors(checked, image_features, caption_features, fingerprint=bundle.fingerprint)

    def add_vectors(
        self,
        items: list[tuple[bytes, str | None, dict]],
        image_features: np.ndarray,
        caption_features: np.ndarray,
        *,
        fingerprint: str | None = None,
    ) -> list[int]:
        """Add items already encoded, as one atomic new version; returns their ids. `image_features` [n, D]:
        one row per item; `caption_features` [m, D]: one row per item whose caption is not empty after
        `update.clean_caption`, in order. `fingerprint`: the bundle that encoded them, checked against the
        live version (another process may have replaced the index since it was opened)."""
        checked = ux.check_items(items)

        def update(st: State) -> dict[str, Any]:
            if fingerprint is not None and fingerprint != st.manifest["fingerprint"]:
                raise IndexMismatchError(
                    f"the vectors come from bundle {fingerprint[:12]}, index {self.path} "
                    f"holds {str(st.manifest['fingerprint'])[:12]}"
                )
            return ux.add_vectors(self.path, st, checked, image_features, caption_features, mmap=self.mmap)

        manifest = self._write(update)
        first, added = int(manifest["next_id"]) - len(checked), len(checked)
        return list(range(first, first + added))

    def remove(self, ids: list[int]) -> int:
        """Remove items by id as one atomic new version; unknown ids are an error (UnknownIdError) and nothing
        changes."""
        wanted = ux.check_ids(ids)
        self._write(lambda st: ux.remove_ids(self.path, st, wanted, mmap=self.mmap))
        return len(wanted)

    def _check(self, bundle: Any) -> None:
        m = self._current().manifest
        check_bundle(bundle, m["fingerprint"], int(m["dim"]), self.path)

    def _write(self, update: Callable[[State], dict[str, Any]]) -> dict[str, Any]:
        """Run `update` on the live version with the writer lock held, then load the version it published."""
        with versions.writer_lock(self.path):
            live = self._current()
            if versions.pointer_stamp(self.path) == self._refused:  # not `live`: another bundle's index
                raise IndexMismatchError(f"index {self.path} was replaced by one of another bundle: not updated")
            manifest = update(live)
            with self._reload:
                self._state = load_state(self.path, self.mmap)
            versions.sweep(self.path)
        return manifest
