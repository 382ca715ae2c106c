"""POST /v1/classify: zero-shot classification of uploaded images against labels."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from clipforge.service.deps import EngineDep, MetricsDep, ReadAccess, SettingsDep
from clipforge.service.errors import APIError, error_responses
from clipforge.service.payload import check_text, parse_body, request_body
from clipforge.service.settings import Settings

router = APIRouter(prefix="/v1", tags=["classify"], dependencies=[ReadAccess])


class ClassifyRequest(BaseModel):
    """Images as base64 (JSON) or as file parts named `images` (multipart)."""

    model_config = ConfigDict(extra="forbid")
    images: list[str] | None = Field(None, description="base64-encoded images (or data: URLs)")
    labels: list[str] | None = Field(None, description="candidate labels, e.g. ['cat', 'dog']")
    label_set: str | None = Field(None, description="name of a label set configured on the server")
    templates: list[str] | None = Field(None, description="prompt templates with '{}'; default: the server's ensemble")
    top_k: int | None = Field(None, ge=1, strict=True, description="return only the best k labels per image")


class LabelScore(BaseModel):
    label: str
    score: float = Field(description="softmax over the request's labels (InfoNCE) or the label's sigmoid (SigLIP)")
    similarity: float = Field(
        description="cosine of the image and the label's (template-averaged) text embedding, in [-1, 1]: "
        "comparable across requests and meaningful for a single label, where a softmax is always 1"
    )


class ImageResult(BaseModel):
    labels: list[LabelScore]


class ClassifyResponse(BaseModel):
    results: list[ImageResult]
    activation: str = Field(description="softmax (InfoNCE bundle) or sigmoid (SigLIP bundle)")
    templates: list[str]
    cached: bool = Field(description="the label set's text embeddings came from the cache")


def resolve_labels(req: ClassifyRequest, settings: Settings) -> list[str]:
    if (req.labels is None) == (req.label_set is None):
        raise APIError(422, "invalid_labels", "give either `labels` or `label_set`")
    if req.label_set is not None:
        if req.label_set not in settings.label_sets:
            raise APIError(404, "unknown_label_set", f"no label set named {req.label_set!r}")
        return list(settings.label_sets[req.label_set])
    labels = [check_text(label, settings, f"labels[{i}]").strip() for i, label in enumerate(req.labels or [])]
    if not labels:
        raise APIError(422, "invalid_labels", "`labels` is empty")
    if len(labels) > settings.max_labels:
        raise APIError(422, "too_many_labels", f"{len(labels)} labels, the limit is {settings.max_labels}")
    if len(set(labels)) != len(labels):
        dup = next(x for i, x in enumerate(labels) if x in labels[:i])
        raise APIError(422, "duplicate_labels", f"label {dup!r} is given more than once")
    return labels


def resolve_templates(req: ClassifyRequest, settings: Settings) -> list[str]:
    if req.templates is None:
        return list(settings.templates)
    if not req.templates or len(req.templates) > settings.max_templates:
        raise APIError(422, "invalid_templates", f"give 1 to {settings.max_templates} templates")
    for i, t in enumerate(req.templates):
        check_text(t, settings, f"templates[{i}]")
        if "{}" not in t:
            raise APIError(422, "invalid_templates", f"templates[{i}]: must contain '{{}}' where the label goes")
    return list(req.templates)


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    summary="Zero-shot classify images against labels",
    openapi_extra=request_body(ClassifyRequest),
    responses=error_responses(400, 401, 404, 413, 415, 422),
)
async def classify(request: Request, settings: SettingsDep, engine: EngineDep, metrics: MetricsDep) -> ClassifyResponse:
    """Rank `labels` (or the server's `label_set`) for each image. Scores are a softmax over the labels
    for InfoNCE bundles and independent sigmoids for SigLIP bundles; each label also carries its raw cosine
    similarity to the image."""
    req, blobs = await parse_body(request, settings, ClassifyRequest)
    labels = resolve_labels(req, settings)
    templates = resolve_templates(req, settings)
    if not blobs:
        raise APIError(422, "no_images", "give at least one image")
    image_features = await engine.encode_images(blobs)  # [N, D]
    class_features, cached = await engine.class_embeddings(labels, templates)  # [L, D]
    metrics.label_cache.labels("hit" if cached else "miss").inc()
    similarity = image_features @ class_features.T  # [N, L]: both L2-normalised
    probs = engine.scores(similarity)  # [N, L]
    top_k = min(req.top_k or len(labels), len(labels))
    results = []
    for row, sims in zip(probs, similarity, strict=True):
        order = row.argsort()[::-1][:top_k]
        results.append(
            ImageResult(
                labels=[LabelScore(label=labels[j], score=float(row[j]), similarity=float(sims[j])) for j in order]
            )
        )
    activation = "sigmoid" if engine.loss == "siglip" else "softmax"
    return ClassifyResponse(results=results, activation=activation, templates=templates, cached=cached)
