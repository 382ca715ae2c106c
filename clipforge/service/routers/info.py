"""GET /v1/info: the loaded bundle, the index, and the server's limits."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from clipforge.service.deps import MaybeEngineDep, MaybeIndexDep, ReadAccess, SettingsDep
from clipforge.service.errors import error_responses

router = APIRouter(prefix="/v1", tags=["info"], dependencies=[ReadAccess])
# what a client is told of the index: never the whole manifest, which names server paths (the index directory,
# the bundle's, the folders it was built from)
INDEX_FIELDS = ("version", "dim", "fingerprint", "metric", "normalized", "counts", "live", "count")
SECTION_FIELDS = ("factory", "count", "recall@10", "tombstones")  # of "images" and "captions"


class Info(BaseModel):
    bundle: dict[str, Any] | None
    index: dict[str, Any] | None
    limits: dict[str, int]
    batching: dict[str, float]
    templates: list[str]
    label_sets: dict[str, int]
    writes_enabled: bool


def public_index_info(raw: dict[str, Any]) -> dict[str, Any]:
    """The allowed fields of the index's `info()` (and its count), as JSON values."""
    out = {key: raw[key] for key in INDEX_FIELDS if key in raw}
    for name in ("images", "captions"):
        if isinstance(raw.get(name), dict):
            out[name] = {key: raw[name][key] for key in SECTION_FIELDS if key in raw[name]}
    return json.loads(json.dumps(out, default=str))  # numpy scalars and the like as plain JSON


@router.get("/info", response_model=Info, summary="Bundle, index and limits", responses=error_responses(401, 503))
async def info(settings: SettingsDep, engine: MaybeEngineDep, index: MaybeIndexDep) -> Info:
    bundle = None
    if engine is not None:
        meta = engine.bundle.meta
        bundle = {
            "fingerprint": engine.fingerprint,
            "arch": meta.get("arch"),
            "embed_dim": engine.embed_dim,
            "loss": engine.loss,
            "logit_scale": engine.logit_scale(),
            "image_size": meta.get("preprocess", {}).get("image_size"),
            "context_length": meta.get("tokenizer", {}).get("context_length"),
            "label_cache_entries": len(engine.labels),
        }
    index_info = None
    if index is not None:
        raw = await index.run(lambda idx: {**dict(idx.info()), "count": len(idx)})
        index_info = public_index_info(raw)
    return Info(
        bundle=bundle,
        index=index_info,
        limits=settings.limits(),
        batching={"max_batch_size": settings.max_batch_size, "max_wait_ms": settings.max_wait_ms},
        templates=list(settings.templates),
        label_sets={name: len(labels) for name, labels in settings.label_sets.items()},
        writes_enabled=settings.writes_enabled,
    )
