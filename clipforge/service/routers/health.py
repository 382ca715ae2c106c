"""Operations: GET /healthz (alive), GET /readyz (model and index loaded), GET /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from clipforge.service.deps import MaybeEngineDep, MaybeIndexDep, MetricsDep, SettingsDep
from clipforge.service.errors import APIError, error_responses

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    model: bool
    index: bool


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Health:
    """The process is up and the event loop answers."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness",
    responses={503: {"model": Readiness, "description": "model or configured index not loaded, or the index unusable"}},
)
async def readyz(settings: SettingsDep, engine: MaybeEngineDep, index: MaybeIndexDep) -> JSONResponse:
    """Ready when the model is loaded and, if the server was given an index, the index is loaded."""
    model_ok = engine is not None and engine.batcher.running
    index_ok = index is not None
    if index is not None:  # loaded, and still usable: a version that broke under us answers 503 everywhere
        try:
            await index.run(len)  # a stat and the manifest's count
        except APIError:
            index_ok = False
    ready = model_ok and (index_ok or settings.index is None)
    body = Readiness(status="ready" if ready else "not_ready", model=model_ok, index=index_ok)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}, **error_responses()},
)
async def metrics(m: MetricsDep) -> Response:
    """Requests, latencies, encoder batch sizes and times, queue depth, label-cache hits."""
    data, ctype = m.render()
    return Response(content=data, media_type=ctype)
