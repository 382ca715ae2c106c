"""POST /v1/search: query the index by text, image, vector or stored id."""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from clipforge.index.search import MAX_K, SCORE_RANGE  # the index's own limits: the CLI checks the same
from clipforge.service.deps import EngineDep, IndexDep, ReadAccess, SettingsDep
from clipforge.service.errors import APIError, error_responses
from clipforge.service.payload import check_text, image_url, parse_body, request_body
from clipforge.service.settings import Settings
from clipforge.service.store import get_item, run_query

router = APIRouter(prefix="/v1", tags=["search"], dependencies=[ReadAccess])
FilterValue = str | int | float | bool
MAX_ID = 2**63 - 1  # ids are SQLite integers
HIDDEN_METADATA = ("source", "member", "path")  # where files live on the server: never sent out


class SearchRequest(BaseModel):
    """Exactly one query: `text`, `image` (base64, or a file part named `image`), `vector` or `id`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    text: str | None = Field(None, description="a text query")
    image: str | None = Field(None, description="a base64-encoded image query")
    vector: list[float] | None = Field(None, description="a query vector of the index's dimension")
    id: int | None = Field(None, ge=0, le=MAX_ID, strict=True, description="find items similar to this stored item")
    target: Literal["images", "captions"] = Field("images", description="search image or caption embeddings")
    # strict: JSON true is not k=1 nor threshold 1.0 (multipart's text fields are converted in payload.py)
    k: int = Field(10, ge=1, le=MAX_K, strict=True, description="number of results (at most the server's max_k)")
    offset: int = Field(0, ge=0, strict=True, description="skip this many results (paging)")
    filters: dict[str, FilterValue | list[FilterValue]] | None = Field(
        None,
        description="metadata filter: {field: value} or {field: [any of these values]}; a field inside an "
        'object is named by its path, e.g. {"exif.camera": "X100"} (which also matches a flat key "exif.camera")',
    )
    threshold: float | None = Field(
        None, ge=SCORE_RANGE[0], le=SCORE_RANGE[1], strict=True, description="drop results scoring below this"
    )


class SearchHit(BaseModel):
    id: int
    score: float
    caption: str | None
    metadata: dict[str, Any]
    image_url: str


class SearchResponse(BaseModel):
    query: Literal["text", "image", "vector", "id"]
    target: Literal["images", "captions"]
    results: list[SearchHit]


def public_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (metadata or {}).items() if k not in HIDDEN_METADATA}


def check_limits(req: SearchRequest, settings: Settings) -> None:
    if req.k > settings.max_k:
        raise APIError(422, "k_out_of_range", f"k must be between 1 and {settings.max_k}")
    if req.offset > settings.max_offset:
        raise APIError(422, "offset_out_of_range", f"offset must be at most {settings.max_offset}")
    hidden = [key for key in req.filters or {} if key in HIDDEN_METADATA]
    if hidden:  # filtering on where files live would tell a client what public_metadata leaves out
        raise APIError(422, "invalid_filter", f"filter key {hidden[0]!r} is not a field that can be searched")
    from clipforge.index.meta import check_filters  # the index's own rule for what it can search

    try:
        check_filters(req.filters or {})
    except ValueError as exn:
        raise APIError(422, "invalid_filter", str(exn)) from exn


def query_vector(vector: list[float], dim: int) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float64)[None, :]  # [1, D]; float64: the norm of tiny values stays > 0
    if v.shape[1] != dim:
        raise APIError(422, "invalid_vector", f"vector has {v.shape[1]} values, the index has dimension {dim}")
    norm = float(np.linalg.norm(v))
    if not math.isfinite(norm) or norm == 0.0:
        raise APIError(422, "invalid_vector", "vector must be finite and non-zero")
    return (v / norm).astype(np.float32)


@router.post(
    "/search",
    response_model=SearchResponse,
    summary="Search the index by text, image, vector or id",
    openapi_extra=request_body(SearchRequest, file_field="image"),
    responses=error_responses(400, 401, 404, 413, 415, 422, 503),
)
async def search(request: Request, settings: SettingsDep, engine: EngineDep, index: IndexDep) -> SearchResponse:
    """Nearest neighbours by cosine similarity. Each result carries its score, caption, metadata and a
    URL of its image (served by GET /v1/items/{id}/image)."""
    req, blobs = await parse_body(request, settings, SearchRequest, file_field="image")
    kinds = [
        name
        for name, given in (
            ("text", req.text is not None),
            ("image", bool(blobs)),
            ("vector", req.vector is not None),
            ("id", req.id is not None),
        )
        if given
    ]
    if len(kinds) != 1 or len(blobs) > 1:
        raise APIError(422, "invalid_query", "give exactly one of text, image, vector or id")
    check_limits(req, settings)
    kw: dict[str, Any] = {
        "k": req.k,
        "target": req.target,
        "filters": req.filters or None,
        "threshold": req.threshold,
        "offset": req.offset,
    }
    kind = kinds[0]
    if kind == "id":
        item_id = int(req.id or 0)
        await get_item(index, item_id)  # unknown id: 404
        hits = await run_query(index, lambda idx: idx.search_id(item_id, **kw))
    else:
        if kind == "text":
            vectors = await engine.encode_texts([check_text(req.text or "", settings, "text")])
        elif kind == "image":
            vectors = await engine.encode_images(blobs)
        else:
            vectors = query_vector(req.vector or [], engine.embed_dim)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # [1, D]
        hits = (await run_query(index, lambda idx: idx.search_vectors(vectors, **kw)))[0]
    results = [
        SearchHit(
            id=h.id,
            score=float(h.score),
            caption=h.caption,
            metadata=public_metadata(h.metadata),
            image_url=image_url(request, h.id),
        )
        for h in hits
    ]
    return SearchResponse(query=kind, target=req.target, results=results)
