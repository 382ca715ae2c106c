"""`clipforge fuse predict`: a saved head's answers for every (image, text) pair of a table or of shards,
offline, without a server and without labels.

One answer per input pair, in the input's order, in the service's form ({"probabilities", "top"}, and "p" for
binary heads) plus where the pair came from ("row N" of a table, "SHARD:KEY" of a shard sample) and its text.
A pair whose image does not decode gets {"error": ...} in its place: nothing is dropped silently, and the
line numbers of the output still match the input's pairs; data in which no image decodes is an error.
Shards are read as a stream, CHUNK pairs at a time (each unique image and text of a chunk embedded once):
memory stays bounded however large the data.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from clipforge.data.shards import skip_reasons
from clipforge.fusion.data import Row, is_table, iter_shard_rows, table_rows
from clipforge.fusion.features import check_device, embed_rows
from clipforge.fusion.head import Head
from clipforge.index.embed import TALLIES

CHUNK = 4096  # pairs per head call


def predict_rows(
    head: Head,
    bundle_path: str | Path,
    spec: str,
    *,
    image_key: str = "image",
    text_key: str = "text",
    batch_size: int = 128,
    device: str = "auto",
    progress: bool = True,
    stats: Counter | None = None,
    skipped: Counter | None = None,
) -> Iterator[tuple[Row, dict[str, Any]]]:
    """(row, answer) for the pairs of `spec`, in order; the row says where its image is (for a page). `head`
    must belong to the bundle. `stats`: images that failed (and "unanswered" pairs); `skipped`: shard samples
    with no image or no text, which are not pairs."""
    from clipforge.encoders.bundle import load_bundle

    check_device(device)
    stats = Counter() if stats is None else stats
    skipped = Counter() if skipped is None else skipped
    total: int | None = None
    if is_table(spec):
        table = table_rows(spec, image_key, text_key, None, ())
        rows: Iterator[Row] = iter(table)
        total = len(table)
    else:
        rows = iter_shard_rows(spec, text_key, None, (), skipped, set())
    bundle = load_bundle(bundle_path, device=device)
    if bundle.fingerprint != head.bundle_fingerprint:
        raise ValueError(f"head {head.name} was trained on bundle {head.bundle_fingerprint[:12]}, not {bundle_path}")
    pending: list[tuple[Row, dict[str, Any]]] = []  # error lines before the first answer: held back until one comes
    n = answered = 0
    bar = tqdm(total=total, desc="predict", unit="pair", disable=not progress, dynamic_ncols=True)
    while chunk := list(itertools.islice(rows, CHUNK)):  # bounded memory, however large the data
        image_feats, text_feats = embed_rows(chunk, bundle, batch_size, False, stats)
        ok = [r for r in chunk if r.image in image_feats]
        answers: Iterator[dict[str, Any]] = iter([])
        if ok:
            zi = np.stack([image_feats[r.image] for r in ok]).astype(np.float32)
            zt = np.stack([text_feats[r.text] for r in ok]).astype(np.float32)
            answers = iter(head.answers(head.predict(zi, zt)))
        for r in chunk:
            where = {"ref": r.ref, "text": r.text}
            if r.image in image_feats:
                if pending:
                    yield from pending
                    pending.clear()
                answered += 1
                yield r, where | next(answers)
            else:
                stats["unanswered"] += 1
                r = replace(r, data=None)  # bytes that did not decode: not kept while the line is held back
                error = (r, where | {"error": "the image could not be read or decoded"})
                if answered:
                    yield error
                else:
                    pending.append(error)
        n += len(chunk)
        bar.update(len(chunk))
    bar.close()
    if not n:
        raise ValueError(f"{spec}: no (image, text) pairs ({skip_reasons(skipped, none='it holds no samples')})")
    if not answered:  # an answer file of error lines alone is a failed run, not a result
        why = skip_reasons(stats, ignore=(*TALLIES, "unanswered"))
        raise ValueError(f"{spec}: not one of its {n} pairs has an image that could be read ({why})")


def thumbnail(row: Row, size: int = 96) -> str | None:
    """The row's image as a base64 JPEG of at most `size` px a side, or None if it does not decode."""
    import base64
    import io

    from clipforge.encoders.images import ImageDecodeError, load_image

    try:
        image = load_image(row.data if row.data is not None else row.image)
    except (ImageDecodeError, OSError):
        return None
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return base64.b64encode(buf.getvalue()).decode()


def answers_page(head: Head, spec: str, shown: list[tuple[str | None, dict[str, Any]]], total: int) -> str:
    """A self-contained HTML page: each shown pair's image, text and answer, with a bar per label."""
    import html

    def bars(probabilities: dict[str, float]) -> str:
        return "".join(
            f'<div class="bar"><span class="label">{html.escape(label)}</span>'
            f'<span class="track"><span class="fill" style="width:{100 * p:.1f}%"></span></span>'
            f'<span class="p">{p:.3f}</span></div>'
            for label, p in probabilities.items()
        )

    cards = []
    for thumb, a in shown:
        img = f'<img alt="" src="data:image/jpeg;base64,{thumb}">' if thumb else '<div class="noimg">no image</div>'
        body = (
            f'<p class="error">{html.escape(a["error"])}</p>'
            if "error" in a
            else f'<p class="top">{html.escape(a["top"])}</p>{bars(a["probabilities"])}'
        )
        cls = "pair error" if "error" in a else "pair"
        cards.append(
            f'<div class="{cls}" data-ref="{html.escape(a["ref"])}">{img}<div><p class="text">'
            f'{html.escape(a["text"])}</p>{body}<p class="ref">{html.escape(a["ref"])}</p></div></div>'
        )
    more = (
        f"<p>The first {len(shown)} of {total} pairs; every answer is in the JSON lines.</p>"
        if total > len(shown)
        else ""
    )
    title = f"{head.name}: {head.kind} head, {head.task} ({', '.join(head.labels)})"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(22rem, 1fr)); gap: 0.8rem; }}
.pair {{ display: flex; gap: 0.7rem; border: 1px solid #ddd; border-radius: 6px; padding: 0.5rem; }}
.pair.error {{ border-color: #c33; background: #fff5f5; }}
.pair img, .noimg {{ width: 96px; height: 96px; object-fit: contain; flex: none; background: #f4f4f4; }}
.noimg {{ display: flex; align-items: center; justify-content: center; font-size: 0.8rem; color: #999; }}
.pair > div {{ flex: 1; min-width: 0; }} .pair > .noimg {{ flex: none; }}
.text {{ margin: 0 0 0.3rem; font-weight: 600; }} .top {{ margin: 0 0 0.3rem; }} .error {{ color: #c33; }}
.ref {{ margin: 0.3rem 0 0; font-size: 0.75rem; color: #888; overflow-wrap: anywhere; }}
.bar {{ display: flex; align-items: center; gap: 0.3rem; font-size: 0.8rem; height: 1.1rem; }}
.bar .label {{ flex: none; width: 4.5rem; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }}
.bar .track {{ flex: 1; min-width: 2rem; }} .bar .p {{ flex: none; width: 2.8rem; text-align: right; }}
.bar .fill {{ display: block; background: #4a7bd0; height: 0.7rem; min-width: 1px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(spec)}: {total} pairs</p>{more}
<div class="grid">{"".join(cards)}</div>
</body></html>
"""
