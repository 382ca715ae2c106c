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
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from clipforge.fusion.data import Row, is_table, iter_shard_rows, table_rows
from clipforge.fusion.features import check_device, embed_rows
from clipforge.fusion.head import Head

log = logging.getLogger(__name__)
CHUNK = 4096  # pairs per head call


def predict_pairs(
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
) -> Iterator[dict[str, Any]]:
    """Answers for the pairs of `spec`, in order. `head` must belong to the bundle (load_head checks that)."""
    from clipforge.encoders.bundle import load_bundle

    check_device(device)
    stats = Counter() if stats is None else stats
    skipped: Counter = Counter()  # shard samples with no image or no text: not pairs, counted apart
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
    pending: list[dict[str, Any]] = []  # error lines before the first answer: held back until one comes
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
                yield where | next(answers)
            else:
                stats["unanswered"] += 1
                error = where | {"error": "the image could not be read or decoded"}
                if answered:
                    yield error
                else:
                    pending.append(error)
        n += len(chunk)
        bar.update(len(chunk))
    bar.close()
    stats.update({f"skipped sample, {k}": v for k, v in skipped.items()})
    if not n:
        why = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items()) if v) or "it holds no samples"
        raise ValueError(f"{spec}: no (image, text) pairs ({why})")
    if not answered:  # an answer file of error lines alone is a failed run, not a result
        why = ", ".join(
            f"{k}: {v}" for k, v in sorted(stats.items()) if v and not k.startswith(("embed", "skipped", "unanswered"))
        )
        raise ValueError(f"{spec}: not one of its {n} pairs has an image that could be read ({why})")
