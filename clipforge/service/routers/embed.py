"""POST /v1/embed: texts and/or images -> L2-normalised vectors."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from clipforge.service.deps import EngineDep, ReadAccess, SettingsDep
from clipforge.service.errors import APIError, error_responses
from clipforge.service.payload import check_text, parse_body, request_body

router = APIRouter(prefix="/v1", tags=["embed"], dependencies=[ReadAccess])


class EmbedRequest(BaseModel):
    """Texts, and images as base64 (JSON) or as file parts named `images` (multipart)."""

    model_config = ConfigDict(extra="forbid")
    texts: list[str] | None = Field(None, description="texts to embed")
    images: list[str] | None = Field(None, description="base64-encoded images (or data: URLs)")


class EmbedResponse(BaseModel):
    dim: int
    fingerprint: str = Field(description="the bundle the vectors came from; vectors of other bundles do not mix")
    text_embeddings: list[list[float]]
    image_embeddings: list[list[float]]


@router.post(
    "/embed",
    response_model=EmbedResponse,
    summary="Embed texts and/or images",
    openapi_extra=request_body(EmbedRequest),
    responses=error_responses(400, 401, 413, 415, 422),
)
async def embed(request: Request, settings: SettingsDep, engine: EngineDep) -> EmbedResponse:
    """L2-normalised embeddings in the bundle's joint space: a text and an image match when their dot
    product is high. Texts and images of concurrent requests are encoded together in micro-batches."""
    req, blobs = await parse_body(request, settings, EmbedRequest)
    texts = [check_text(t, settings, f"texts[{i}]") for i, t in enumerate(req.texts or [])]
    if len(texts) > settings.max_texts:
        raise APIError(422, "too_many_texts", f"{len(texts)} texts, the limit is {settings.max_texts}")
    if not texts and not blobs:
        raise APIError(422, "nothing_to_embed", "give at least one text or image")
    image_features = await engine.encode_images(blobs) if blobs else None  # [N, D]
    text_features = await engine.encode_texts(texts) if texts else None  # [M, D]
    return EmbedResponse(
        dim=engine.embed_dim,
        fingerprint=engine.fingerprint,
        text_embeddings=[] if text_features is None else text_features.tolist(),
        image_embeddings=[] if image_features is None else image_features.tolist(),
    )
