"""Fusion heads: GET /v1/heads, GET /v1/heads/{name}, POST /v1/heads/{name}/predict."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from clipforge.fusion.head import Head
from clipforge.service.deps import EngineDep, HeadsDep, MaybeIndexDep, MetricsDep, ReadAccess, SettingsDep
from clipforge.service.errors import APIError, error_responses
from clipforge.service.fusion import stored_image_features, text_features
from clipforge.service.payload import check_text, parse_body, request_body

router = APIRouter(prefix="/v1/heads", tags=["heads"], dependencies=[ReadAccess])
HeadName = Annotated[str, Path(description="the head's name, as GET /v1/heads lists it")]
ItemIdValue = Annotated[int, Field(strict=True, ge=0, le=2**63 - 1)]  # strict: `true` is not item 1


class HeadOut(BaseModel):
    name: str
    kind: str = Field(description="the head's architecture")
    task: str = Field(description="binary | multiclass | multilabel")
    labels: list[str] = Field(description="what it answers; binary: [negative, positive]")
    bundle_fingerprint: str = Field(description="the bundle it was trained on (the served one)")
    dim: int
    metrics: dict[str, Any] = Field(description="its held-out evaluation, as recorded when it was trained")


class HeadList(BaseModel):
    heads: list[HeadOut]


class PredictRequest(BaseModel):
    """Pairs: `texts[i]` asks about image i. Images as base64 (JSON) or file parts named `images`
    (multipart, in the order of the `texts` fields), or `ids` of indexed items (their stored vectors)."""

    model_config = ConfigDict(extra="forbid")
    texts: list[str] | None = Field(None, description="one text (question) per image")
    images: list[str] | None = Field(None, description="base64-encoded images (or data: URLs)")
    ids: list[ItemIdValue] | None = Field(None, description="ids of indexed items instead of images")


class PairResult(BaseModel):
    probabilities: dict[str, float] = Field(description="label -> probability, in the head's label order")
    top: str = Field(description="the most probable label")
    p: float | None = Field(None, description="binary heads only: the probability of the positive label")


class PredictResponse(BaseModel):
    head: str
    task: str
    labels: list[str]
    results: list[PairResult] = Field(description="one per (image, text) pair, in order")


def head_out(head: Head) -> HeadOut:
    return HeadOut(
        name=head.name,
        kind=head.kind,
        task=head.task,
        labels=list(head.labels),
        bundle_fingerprint=head.bundle_fingerprint,
        dim=int(head.dim),
        metrics=json.loads(json.dumps(head.metrics, default=str)),  # numpy scalars and the like as JSON
    )


async def get_head(name: HeadName, heads: HeadsDep) -> Head:
    head = heads.get(name)
    if head is None:
        served = ", ".join(sorted(heads)) or "none"
        raise APIError(404, "unknown_head", f"no head named {name!r} (served: {served})"[:300])
    return head


@router.get("", response_model=HeadList, summary="List the served fusion heads", responses=error_responses(401))
async def list_heads(heads: HeadsDep) -> HeadList:
    """Every head this server was started with (`clipforge serve --head DIR`); empty when none."""
    return HeadList(heads=[head_out(h) for h in heads.values()])


@router.get("/{name}", response_model=HeadOut, summary="One fusion head", responses=error_responses(401, 404))
async def describe_head(name: HeadName, heads: HeadsDep) -> HeadOut:
    return head_out(await get_head(name, heads))


def pairs(req: PredictRequest, blobs: list[bytes], max_pairs: int) -> int:
    """The number of pairs, after the checks that need no model: a 4xx for every malformed request."""
    if not req.texts:
        raise APIError(422, "no_texts", "give `texts`: one text per image")
    if blobs and req.ids is not None:
        raise APIError(422, "invalid_pairs", "give `images` or `ids`, not both")
    images = len(blobs) if req.ids is None else len(req.ids)
    if images == 0:
        raise APIError(422, "no_images", "give at least one image (`images`) or indexed item (`ids`)")
    if max(images, len(req.texts)) > max_pairs:
        raise APIError(422, "too_many_pairs", f"at most {max_pairs} (image, text) pairs per request")
    if images != len(req.texts):
        raise APIError(422, "count_mismatch", f"{images} images but {len(req.texts)} texts: give one text per image")
    return images


@router.post(
    "/{name}/predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
    summary="Ask a fusion head about (image, text) pairs",
    openapi_extra=request_body(PredictRequest),
    responses=error_responses(400, 401, 404, 413, 415, 422, 503),
)
async def predict(
    name: HeadName,
    request: Request,
    settings: SettingsDep,
    engine: EngineDep,
    heads: HeadsDep,
    index: MaybeIndexDep,
    metrics: MetricsDep,
) -> PredictResponse:
    """The head's label probabilities for each pair, e.g. yes/no for "is there a red circle?". Images and
    texts are encoded in the server's micro-batches with other requests' (texts through the embedding
    cache); `ids` use the index's stored image vectors, so nothing is decoded or encoded for them."""
    head = await get_head(name, heads)
    req, blobs = await parse_body(request, settings, PredictRequest)
    n = pairs(req, blobs, settings.max_pairs)
    texts = [check_text(t, settings, f"texts[{i}]") for i, t in enumerate(req.texts or [])]
    if req.ids is not None and index is None:
        raise APIError(404, "no_index", "this server has no index, so no `ids` (start it with --index DIR)")
    t0 = time.perf_counter()
    images = engine.encode_images(blobs) if index is None or req.ids is None else stored_image_features(index, req.ids)
    # together, so the image and the text encodes wait for one batching window, not two
    image_features, (text_feats, cached) = await asyncio.gather(images, text_features(engine, texts))  # [N, D] x2
    probs = np.asarray(head.predict(image_features, text_feats), dtype=np.float64)  # [N, C]; microseconds
    if probs.shape != (n, len(head.labels)) or not np.isfinite(probs).all():
        raise RuntimeError(f"head {head.name} answered shape {probs.shape} or non-finite values")  # a 500: ours
    metrics.head_predictions.labels(head.name).inc(n)
    metrics.head_seconds.labels(head.name).observe(time.perf_counter() - t0)
    metrics.label_cache.labels("hit").inc(cached)
    metrics.label_cache.labels("miss").inc(len(set(texts)) - cached)
    results = [PairResult(**answer) for answer in head.answers(probs)]
    return PredictResponse(head=head.name, task=head.task, labels=list(head.labels), results=results)
