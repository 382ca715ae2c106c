"""`clipforge data shards`: pack images + captions into WebDataset shards, resized as img2dataset does.

Inputs: a folder of images with sidecar captions (`x.jpg` + `x.txt`), or a CSV / JSONL file of
(path, caption) rows. Images larger than `max_size` on their longer side are downscaled and re-encoded
as JPEG, so training decodes small images; unreadable images are skipped and counted.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import webdataset as wds
from PIL import Image
from tqdm import tqdm

from clipforge.encoders.images import IMAGE_EXTENSIONS, ImageDecodeError, load_image


def iter_folder(folder: Path) -> Iterator[tuple[Path, str | None]]:
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS and path.is_file():
            side = path.with_suffix(".txt")
            yield path, side.read_text(encoding="utf-8", errors="replace").strip() if side.is_file() else None


def iter_table(table: Path, path_col: str, caption_col: str) -> Iterator[tuple[Path, str | None]]:
    base = table.parent
    try:
        if table.suffix.lower() == ".jsonl":
            with open(table, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except ValueError as exn:
                        raise ValueError(f"{table}:{n}: not valid JSON ({exn})") from None
                    if not isinstance(row, dict) or not isinstance(row.get(path_col), str) or not row[path_col]:
                        raise ValueError(f"{table}:{n}: expected an object with a {path_col!r} string")
                    caption = row.get(caption_col)
                    yield base / row[path_col], None if caption is None else str(caption)
        else:
            with open(table, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                for row in reader:
                    if path_col not in row or caption_col not in row:
                        raise ValueError(f"{table}: needs columns {path_col!r} and {caption_col!r}, has {list(row)}")
                    if not row[path_col]:
                        raise ValueError(f"{table}:{reader.line_num}: the {path_col!r} column is empty")
                    yield base / row[path_col], row[caption_col]
    except UnicodeDecodeError as exn:
        raise ValueError(f"{table} is not a UTF-8 CSV or JSONL file ({exn.reason} at byte {exn.start})") from None


def encode_resized(path: Path, max_size: int, quality: int) -> tuple[bytes, str, tuple[int, int]]:
    raw = path.read_bytes()
    im = load_image(raw, draft_size=max_size)
    w, h = im.size
    ext = path.suffix.lower().lstrip(".")
    if max(w, h) <= max_size and ext in ("jpg", "jpeg") and Image.open(io.BytesIO(raw)).mode == "RGB":
        return raw, "jpg", (w, h)  # already small and a plain RGB JPEG: keep the original bytes
    if max(w, h) > max_size:
        scale = max_size / max(w, h)
        im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), "jpg", im.size


def pack_shards(
    source: str | Path,
    out: str | Path,
    *,
    shard_size: int = 1000,
    max_size: int = 512,
    quality: int = 90,
    path_col: str = "path",
    caption_col: str = "caption",
) -> dict:
    source, out = Path(source), Path(out)
    if shard_size < 1 or max_size < 16 or not 1 <= quality <= 100:
        raise ValueError(
            f"need shard_size >= 1, max_size >= 16 and 1 <= quality <= 100; got {shard_size}, {max_size}, {quality}"
        )
    if any(out.glob("shard-*.tar")):  # a second data set beside the first: training on the folder would mix them
        raise ValueError(f"{out} already holds shards: give an empty or new folder")
    if source.is_dir():
        rows = list(iter_folder(source))
    elif source.is_file():
        rows = list(iter_table(source, path_col, caption_col))
    else:
        raise FileNotFoundError(f"{source} is neither a folder nor a CSV/JSONL file")
    if not rows:
        raise ValueError(f"no images found in {source}")
    out.mkdir(parents=True, exist_ok=True)  # only once the source is known to be readable
    skipped: Counter = Counter()
    written = 0
    # integer mtime: a float one costs a PAX header per member (twice the tar parsing) and varies run to run
    with wds.ShardWriter(str(out / "shard-%06d.tar"), maxcount=shard_size, verbose=0, mtime=0) as sink:
        for i, (path, caption) in enumerate(tqdm(rows, desc="packing", unit="img")):
            if not caption or not str(caption).strip():
                skipped["no_caption"] += 1
                continue
            try:
                data, ext, (w, h) = encode_resized(path, max_size, quality)
            except (ImageDecodeError, OSError):
                skipped["bad_image"] += 1
                continue
            meta = {"source": str(path), "width": w, "height": h, "caption": str(caption)}
            sink.write({"__key__": f"{i:09d}", ext: data, "txt": str(caption).strip(), "json": json.dumps(meta)})
            written += 1
        shards = sink.shard
    if written == 0:
        for empty in out.glob("shard-*.tar"):  # the writer's first, empty shard: nothing half-made stays
            empty.unlink()
        raise ValueError(f"no usable (image, caption) pairs in {source}: {dict(skipped)}")
    return {
        "written": written,
        "skipped": dict(skipped),
        "shards": shards,
        "pattern": f"{out}/shard-{{000000..{shards - 1:06d}}}.tar",
    }
