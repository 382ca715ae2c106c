"""`clipforge index …`: build, search, add, remove, info. `register(subparsers)` adds the group."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from clipforge.cliutil import load_bundle_arg, print_json


def _bundle_for(index_dir: str, path: str | None, device: str) -> Any:
    """The bundle named by --bundle, else the one recorded in the index manifest."""
    from clipforge.index.versions import read_manifest

    recorded = read_manifest(Path(index_dir)).get("bundle", {}).get("path")
    if not path and not isinstance(recorded, str):
        raise ValueError(f"{index_dir}'s manifest records no bundle path: give --bundle")
    return load_bundle_arg(path or recorded, device)


def _hit_json(hit: Any) -> dict[str, Any]:
    return {"id": hit.id, "score": round(hit.score, 5), "caption": hit.caption, **hit.metadata}


def cmd_build(a: argparse.Namespace) -> int:
    from clipforge.index import Index

    idx = Index.build(
        load_bundle_arg(a.bundle, a.device),
        a.data,
        a.out,
        factory=a.factory,
        memory_budget_mb=a.memory_budget_mb,
        batch_size=a.batch_size,
        caption_key=a.caption_key,
        progress=not a.quiet,
        refine=not a.no_refine,
    )
    info = idx.info()
    print_json(
        {
            "index": str(idx.path),
            "counts": info["counts"],
            **{
                n: {k: info[n].get(k) for k in ("factory", "count", "recall@10", "search_params")}
                | ({"refine_k_factor": info[n]["refine"]["k_factor"]} if info[n].get("refine") else {})
                for n in ("images", "captions")
            },
        }
    )
    return 0


def _filters(raw: list[str]) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for item in raw:
        if "=" not in item:
            raise ValueError(f"--filter expects field=value, got {item!r}")
        key, text = item.split("=", 1)
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        if key in out:  # --filter color=red --filter color=blue: either value, as a list would say
            before = out[key] if isinstance(out[key], list) else [out[key]]
            value = before + (value if isinstance(value, list) else [value])
        out[key] = value
    return out or None


def cmd_search(a: argparse.Namespace) -> int:
    from clipforge.encoders.images import ImageDecodeError
    from clipforge.index import Index
    from clipforge.index.search import check_paging

    check_paging(a.k, a.offset, a.threshold, a.collapse, a.target)  # the index's rule, before any slow load
    given = [x for x in (a.text, a.image, a.id) if x is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of --text, --image or --id")
    kw = {
        "target": a.target,
        "filters": _filters(a.filter),
        "threshold": a.threshold,
        "offset": a.offset,
        "collapse": a.collapse,
    }
    if a.id is not None:
        hits = Index.open(a.index, mmap=a.mmap).search_id(a.id, a.k, **kw)
    else:
        bundle = _bundle_for(a.index, a.bundle, a.device)
        idx = Index.open(a.index, bundle=bundle, mmap=a.mmap)
        if a.text is not None:
            hits = idx.search_text(bundle, a.text, a.k, **kw)
        else:
            if not Path(a.image).is_file():
                raise FileNotFoundError(f"no image at {a.image}")
            try:
                image = bundle.load_image(a.image)
            except ImageDecodeError as exn:
                raise ImageDecodeError(exn.reason, f"--image {a.image}: {exn}") from None
            hits = idx.search_image(bundle, image, a.k, **kw)
    print_json([_hit_json(h) for h in hits])
    return 0


def cmd_add(a: argparse.Namespace) -> int:
    from clipforge.index import Index
    from clipforge.index.types import IndexInputError

    bundle = _bundle_for(a.index, a.bundle, a.device)
    idx = Index.open(a.index, bundle=bundle)
    items = []
    for path in a.images:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"no image at {p}")
        txt = p.with_suffix(".txt")
        caption = a.caption if a.caption is not None else (txt.read_text().strip() if txt.is_file() else None)
        items.append((p.read_bytes(), caption, {"file": p.name}))
    try:
        ids = idx.add(bundle, items)
    except IndexInputError as exn:  # "item 3: not a recognised image format" -> the file's name
        if exn.item is None:
            raise
        raise IndexInputError(f"{a.images[exn.item]}: {exn.reason}") from None
    print_json({"added": ids, "items": len(idx)})
    return 0


def cmd_remove(a: argparse.Namespace) -> int:
    from clipforge.index import Index

    idx = Index.open(a.index)
    n = idx.remove(a.ids)
    print_json({"removed": n, "items": len(idx)})
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from clipforge.index import Index

    print_json(Index.open(a.index).info())
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `index {build,search,add,remove,info}` to an argparse subparsers object."""
    group = subparsers.add_parser("index", help="build, search and update a FAISS index of images and captions")
    sub = group.add_subparsers(dest="index_command", required=True)

    s = sub.add_parser("build", help="embed shards or an image folder into a new index directory")
    s.add_argument("--bundle", required=True, help="model bundle directory")
    s.add_argument("--data", required=True, help="shard spec (brace pattern, '::' separated) or an image folder")
    s.add_argument("--out", required=True, help="new index directory")
    s.add_argument("--factory", help="FAISS factory string (default: chosen from the count and memory budget)")
    s.add_argument(
        "--memory-budget-mb",
        type=float,
        help="RAM for the vectors of each index (the float16 re-rank copies on disk are extra)",
    )
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--caption-key", default="txt", help="'txt' or 'json:<field>'")
    s.add_argument("--device", default="auto")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument(
        "--no-refine",
        action="store_true",
        help="a compressed index keeps only its codes (default: also float16 copies of the vectors "
        "on disk, 2 B/dimension, to re-rank candidates exactly)",
    )
    s.set_defaults(func=cmd_build)

    s = sub.add_parser("search", help="search by --text, --image or stored --id; prints JSON hits")
    s.add_argument("index")
    s.add_argument("--text")
    s.add_argument("--image", help="path of a query image")
    s.add_argument("--id", type=int, help="an indexed item's id (its image vector is the query)")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--target", choices=("images", "captions"), default="images")
    s.add_argument("--filter", action="append", default=[], metavar="FIELD=VALUE")
    s.add_argument("--threshold", type=float)
    s.add_argument("--offset", type=int, default=0)
    s.add_argument("--collapse", type=float, help="drop near-duplicates at or above this image similarity")
    s.add_argument("--bundle", help="default: the bundle path recorded in the manifest")
    s.add_argument("--device", default="auto")
    s.add_argument("--mmap", action="store_true", help="memory-map the inverted lists instead of reading them")
    s.set_defaults(func=cmd_search)

    s = sub.add_parser("add", help="add image files (caption from --caption or a sidecar .txt)")
    s.add_argument("index")
    s.add_argument("images", nargs="+")
    s.add_argument("--caption")
    s.add_argument("--bundle", help="default: the bundle path recorded in the manifest")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_add)

    s = sub.add_parser("remove", help="remove items by id")
    s.add_argument("index")
    s.add_argument("ids", nargs="+", type=int)
    s.set_defaults(func=cmd_remove)

    s = sub.add_parser("info", help="print the manifest and live counts")
    s.add_argument("index")
    s.set_defaults(func=cmd_info)
    return group
