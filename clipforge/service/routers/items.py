"""Stored items: GET /v1/items/{id}, GET /v1/items/{id}/image, POST /v1/items, DELETE /v1/items/{id}."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from clipforge.service.deps import EngineDep, IndexDep, ReadAccess, SettingsDep, WriteAccess
from clipforge.service.errors import APIError, error_responses
from clipforge.service.payload import check_text, image_url, parse_body, request_body
from clipforge.service.store import get_item as lookup_item
from clipforge.service.store import index_errors, run_query

router = APIRouter(prefix="/v1/items", tags=["items"])


def _plain_digits(value: Any) -> Any:
    """An id in a path is written as plain digits: "1_0", "+1", "1.0" or "-0" would name another item's URL."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("an item id is written as plain digits")
    return value


ItemId = Annotated[
    int, Path(ge=0, le=2**63 - 1, description="the item's id in the index"), BeforeValidator(_plain_digits)
]
SAFE_IMAGE_TYPES = {"image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff"}


class ItemOut(BaseModel):
    id: int
    key: str | None
    caption: str | None
    width: int | None
    height: int | None
    metadata: dict[str, Any]
    image_url: str


class AddItemsRequest(BaseModel):
    """Images as base64 (JSON) or file parts named `images` (multipart), with parallel captions/metadata."""

    model_config = ConfigDict(extra="forbid")
    images: list[str] | None = Field(None, description="base64-encoded images")
    captions: list[str] | None = Field(None, description="one caption per image (optional)")
    metadata: list[dict[str, Any]] | None = Field(None, description="one metadata object per image (optional)")


class AddItemsResponse(BaseModel):
    ids: list[int]


class DeleteResponse(BaseModel):
    removed: int


@router.get(
    "/{item_id}", response_model=ItemOut, dependencies=[ReadAccess], responses=error_responses(401, 404, 422, 503)
)
async def get_item(item_id: ItemId, request: Request, index: IndexDep) -> ItemOut:
    """An item's caption, size and metadata (its file path on the server is never exposed)."""
    item = await lookup_item(index, item_id)
    return ItemOut(
        id=item.id,
        key=item.key,
        caption=item.caption,
        width=item.width,
        height=item.height,
        metadata=dict(item.extra or {}),
        image_url=image_url(request, item.id),
    )


@router.get(
    "/{item_id}/image",
    response_class=Response,
    dependencies=[ReadAccess],
    responses={
        200: {"content": {"image/*": {}}, "description": "the stored image"},
        **error_responses(401, 404, 422, 503),
    },
)
async def get_item_image(item_id: ItemId, index: IndexDep) -> Response:
    """The stored image's bytes, read only from the index's own sources (never a path or URL from a client)."""
    await lookup_item(index, item_id)  # unknown id: 404
    try:
        data, mime = await index.run(lambda idx: idx.read_image_bytes(item_id))
    except index_errors() as exn:  # its source file or shard went away
        raise APIError(404, "image_unavailable", f"the image of item {item_id} cannot be read") from exn
    mime = mime if mime in SAFE_IMAGE_TYPES else "application/octet-stream"
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"}
    return Response(content=data, media_type=mime, headers=headers)


@router.post(
    "",
    status_code=201,
    response_model=AddItemsResponse,
    dependencies=[WriteAccess],
    openapi_extra=request_body(AddItemsRequest),
    responses=error_responses(400, 401, 403, 404, 413, 415, 422, 503),
)
async def add_items(request: Request, settings: SettingsDep, engine: EngineDep, index: IndexDep) -> AddItemsResponse:
    """Add images (with optional captions and metadata) to the index; needs the write key."""
    req, blobs = await parse_body(request, settings, AddItemsRequest)
    if not blobs:
        raise APIError(422, "no_images", "give at least one image")
    captions: list[str | None] = list(req.captions) if req.captions is not None else [None] * len(blobs)
    metadata = list(req.metadata) if req.metadata is not None else [{} for _ in blobs]
    if len(captions) != len(blobs) or len(metadata) != len(blobs):
        raise APIError(422, "validation_error", "give one caption and one metadata object per image (or none)")
    for i, c in enumerate(captions):
        if c is not None:
            check_text(c, settings, f"captions[{i}]")
    from clipforge.index.meta import check_metadata  # (the items routes need the index package anyway)
    from clipforge.index.update import clean_caption

    for i, m in enumerate(metadata):
        try:
            check_metadata(m, f"metadata[{i}]")  # what could be stored but never sent back or searched, or too big
        except ValueError as exn:
            raise APIError(422, "invalid_metadata", str(exn)) from exn
    # encoded like any other request: each image decoded once, batched with the others, in the batch metrics;
    # a bad image is its 4xx before the index is touched
    image_features = await engine.encode_images(blobs)  # [n, D]
    texts = [c for c in map(clean_caption, captions) if c]  # what the index stores: one row per kept caption
    caption_features = await engine.encode_texts(texts) if texts else np.zeros((0, engine.embed_dim), np.float32)
    items = list(zip(blobs, captions, metadata, strict=True))
    fingerprint = engine.fingerprint
    ids = await run_query(
        index, lambda idx: idx.add_vectors(items, image_features, caption_features, fingerprint=fingerprint)
    )
    return AddItemsResponse(ids=[int(i) for i in ids])


@router.delete(
    "/{item_id}",
    response_model=DeleteResponse,
    dependencies=[WriteAccess],
    responses=error_responses(401, 403, 404, 422, 503),
)
async def delete_item(item_id: ItemId, index: IndexDep) -> DeleteResponse:
    """Remove one item from the index; needs the write key."""
    await lookup_item(index, item_id)  # unknown id: 404
    removed = await run_query(index, lambda idx: idx.remove([item_id]))
    if not removed:
        raise APIError(404, "not_found", f"no item with id {item_id}")
    return DeleteResponse(removed=int(removed))
