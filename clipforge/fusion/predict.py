"""`clipforge fuse predict`: a saved head's answers for every (image, text) pair of a table or of shards,
offline, without a server and without labels.

One answer per input pair, in the input's order, in the service's form ({"probabilities", "top"}, and "p" for
binary heads) plus where the pair came from ("row N" of a table, a shard sample's key) and its text. A pair
whose image does not decode gets {"error": ...} in its place: nothing is dropped silently, and the line
numbers of the output still match the input's pairs.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from clipforge.fusion.data import is_table, shard_rows, table_rows
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
    if is_table(spec):
        rows = table_rows(spec, image_key, text_key, None, ())
    else:  # samples with no image or no text are not pairs: counted apart from pairs whose image fails
        skipped: Counter = Counter()
        rows = shard_rows(spec, text_key, None, (), skipped)
        stats.update({f"skipped sample, {k}": v for k, v in skipped.items()})
        if not rows:
            why = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items()) if v) or "it holds no samples"
            raise ValueError(f"{spec}: no (image, text) pairs ({why})")
    if not rows:
        raise ValueError(f"{spec}: no (image, text) pairs")
    bundle = load_bundle(bundle_path, device=device)
    if bundle.fingerprint != head.bundle_fingerprint:
        raise ValueError(f"head {head.name} was trained on bundle {head.bundle_fingerprint[:12]}, not {bundle_path}")
    image_feats, text_feats = embed_rows(rows, bundle, batch_size, progress, stats)
    if not image_feats:  # an answer file of error lines alone is a failed run, not a result
        why = ", ".join(f"{k}: {v}" for k, v in sorted(stats.items()) if v and not k.startswith(("embed", "skipped")))
        raise ValueError(f"{spec}: not one of its {len(rows)} pairs has an image that could be read ({why})")
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        ok = [r for r in chunk if r.image in image_feats]
        answers: Iterator[dict[str, Any]] = iter([])
        if ok:
            zi = np.stack([image_feats[r.image] for r in ok]).astype(np.float32)
            zt = np.stack([text_feats[r.text] for r in ok]).astype(np.float32)
            answers = iter(head.answers(head.predict(zi, zt)))
        for r in chunk:
            where = {"ref": r.ref, "text": r.text}
            if r.image in image_feats:
                yield where | next(answers)
            else:
                stats["unanswered"] += 1
                yield where | {"error": "the image could not be read or decoded"}
