"""The index directory on disk: immutable version directories and one pointer replaced atomically.

```
DIR/manifest.json        the current manifest; names the live version ("version_dir": "v0003")
DIR/v0003/               images.faiss, captions.faiss, meta.sqlite, manifest.json (never modified)
DIR/images/ab/<sha>.jpg  image bytes added through `Index.add` (content addressed)
DIR/.lock                writers take an exclusive flock on it; readers take nothing
```
An update assembles `.tmp-v0004-<pid>/`, fsyncs it, renames it to `v0004/` and only then replaces
`manifest.json` with os.replace. A crash before that last step leaves the previous version live (the
leftover directory is swept by the next writer); readers never see a half-written version.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss

from clipforge.encoders.jsonfile import read_format_json
from clipforge.index.types import IndexInputError, IndexUnreadableError

FORMAT = "clipforge-index/1"
MANIFEST = "manifest.json"
KEEP_VERSIONS = 3  # the live one plus two older ones, for readers that opened them a moment ago


def now() -> str:
    """A manifest's timestamps: UTC, to the second."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def version_name(n: int) -> str:
    return f"v{n:04d}"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


MANIFEST_SHAPE = {
    "version": int,
    "version_dir": str,
    "fingerprint": str,
    "dim": int,
    "next_id": int,
    "counts": dict,
    "files": dict,
    "images": dict,
    "captions": dict,
    "bundle": dict,
    "provenance": dict,
}


REQUIRED = ("version_dir", "dim", "fingerprint", "images", "captions")


def read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not root.is_dir():
        raise FileNotFoundError(f"no index directory at {root}")
    if not path.is_file():
        raise FileNotFoundError(f"{root} is not a clipforge index (no {MANIFEST})")
    manifest = read_format_json(path, FORMAT, MANIFEST_SHAPE, REQUIRED, IndexUnreadableError, "index")
    return manifest


def first_manifest(bundle: Any, sections: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Version 1's manifest: the build's `sections` (from `build.build_from_parts`), bound to `bundle`."""
    from clipforge.encoders.bundle import code_version

    return {
        "format": FORMAT,
        "version": 1,
        "version_dir": version_name(1),
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
        },
        "provenance": {
            "created": now(),
            "updated": now(),
            "code_version": code_version(),
            "faiss_version": faiss.__version__,
            "build_seconds": round(seconds, 3),
            "embedding": sections["embedding"],
        },
    }


def pointer_stamp(root: Path) -> tuple[int, int]:
    """Changes whenever manifest.json is replaced (a new inode each time): readers poll this cheaply."""
    st = os.stat(root / MANIFEST)
    return st.st_ino, st.st_mtime_ns


def file_sizes(vdir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(vdir.iterdir()) if p.is_file() and p.name != MANIFEST}


def verify_files(root: Path, manifest: dict[str, Any]) -> Path:
    """The live version directory, after checking its files have the sizes the manifest recorded."""
    vdir = root / manifest["version_dir"]
    for name, size in manifest.get("files", {}).items():
        path = vdir / name
        if not path.is_file():
            raise IndexUnreadableError(f"{path} is missing: the index is incomplete")
        actual = path.stat().st_size
        if actual != size:
            raise IndexUnreadableError(f"{path} has {actual} bytes, the manifest recorded {size}: truncated or corrupt")
    return vdir


@contextlib.contextmanager
def writer_lock(root: Path) -> Iterator[None]:
    """One writer at a time across processes; readers are never blocked."""
    with open(root / ".lock", "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def new_version(root: Path, number: int) -> Iterator[Path]:
    """A temporary directory for version `number`; on success it is renamed into place (not yet live)."""
    sweep(root)
    tmp = root / f".tmp-{version_name(number)}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        final = root / version_name(number)
        if final.exists():  # left by a crash between rename and pointer update: never live, safe to drop
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish(root: Path, manifest: dict[str, Any]) -> None:
    """Make `manifest` (whose version directory is in place) the live one: the single atomic step."""
    vdir = root / manifest["version_dir"]
    manifest = {**manifest, "files": file_sizes(vdir)}
    data = json.dumps(manifest, indent=2, sort_keys=False).encode()
    atomic_write(vdir / MANIFEST, data)
    commit_pointer(root, data)


def commit_pointer(root: Path, data: bytes) -> None:
    atomic_write(root / MANIFEST, data)


def sweep(root: Path) -> None:
    """Drop temporary directories of dead writers and versions older than the last KEEP_VERSIONS."""
    for p in root.glob(".tmp-v*"):
        pid = p.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid() or not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
    try:
        live = read_manifest(root)["version_dir"]
    except (FileNotFoundError, IndexInputError):
        return
    versions = sorted(p.name for p in root.glob("v[0-9][0-9][0-9][0-9]") if p.is_dir())
    keep = set(versions[-KEEP_VERSIONS:]) | {live}
    for name in versions:
        if name not in keep and name < live:
            shutil.rmtree(root / name, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
