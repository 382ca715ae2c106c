"""GET /v1/info: the loaded bundle, the index, and the server's limits."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from clipforge.service.deps import MaybeEngineDep, MaybeIndexDep, ReadAccess, SettingsDep
from clipforge.service.errors import error_responses

router = APIRouter(prefix="/v1", tags=["info"], dependencies=[ReadAccess])


class Info(BaseModel):
    bundle: dict[str, Any] | None
    index: dict[str, Any] | None
    limits: dict[str, int]
    batching: dict[str, float]
    templates: list[str]
    label_sets: dict[str, int]
    writes_enabled: bool


@router.get("/info", response_model=Info, summary="Bundle, index and limits", responses=error_responses(401))
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
        index_info = json.loads(json.dumps(raw, default=str))  # paths and the like as strings
    return Info(
        bundle=bundle,
        index=index_info,
        limits=settings.limits(),
        batching={"max_batch_size": settings.max_batch_size, "max_wait_ms": settings.max_wait_ms},
        templates=list(settings.templates),
        label_sets={name: len(labels) for name, labels in settings.label_sets.items()},
        writes_enabled=settings.writes_enabled,
    )
