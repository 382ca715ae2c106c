"""Dependencies, as `Annotated` aliases. Tests swap any of them through `app.dependency_overrides`.

They are `async def` on purpose: FastAPI runs a plain `def` dependency in the thread pool, a thread hop
per dependency per request, which cost more than the model itself for a small encoder.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from clipforge.fusion.head import Head
from clipforge.service.engine import Engine
from clipforge.service.errors import APIError
from clipforge.service.metrics import Metrics
from clipforge.service.settings import Settings
from clipforge.service.store import IndexHandle

API_KEY_HEADER = "X-API-Key"
_api_key = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="write key (or read key for reads)")


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def maybe_engine(request: Request) -> Engine | None:
    return request.app.state.engine


async def maybe_index(request: Request) -> IndexHandle | None:
    return request.app.state.index


async def get_heads(request: Request) -> dict[str, Head]:
    return request.app.state.heads


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
MaybeEngineDep = Annotated[Engine | None, Depends(maybe_engine)]
MaybeIndexDep = Annotated[IndexHandle | None, Depends(maybe_index)]
HeadsDep = Annotated[dict[str, Head], Depends(get_heads)]


async def get_engine(engine: MaybeEngineDep) -> Engine:
    if engine is None:
        raise APIError(503, "not_ready", "the model is not loaded yet")
    return engine


async def get_index(index: MaybeIndexDep) -> IndexHandle:
    if index is None:
        raise APIError(404, "no_index", "this server has no index (start it with --index DIR)")
    return index


EngineDep = Annotated[Engine, Depends(get_engine)]
IndexDep = Annotated[IndexHandle, Depends(get_index)]


def key_matches(given: str | None, *keys: object) -> bool:
    if not given:
        return False
    # compare_digest on bytes: constant time, and no TypeError on non-ASCII header values
    return any(
        k is not None and secrets.compare_digest(given.encode(), k.get_secret_value().encode())  # type: ignore[attr-defined]
        for k in keys
    )


async def require_read(settings: SettingsDep, key: Annotated[str | None, Security(_api_key)] = None) -> None:
    """Reads are open unless a read key is configured; then the read key or the write key is needed."""
    if settings.reads_protected and not key_matches(key, settings.read_api_key, settings.api_key):
        raise APIError(401, "unauthorized", f"missing or wrong {API_KEY_HEADER}", {"WWW-Authenticate": "APIKey"})


async def require_write(settings: SettingsDep, key: Annotated[str | None, Security(_api_key)] = None) -> None:
    """Writes are refused (403) when no write key is configured, and need the write key otherwise."""
    if not settings.writes_enabled:
        raise APIError(403, "writes_disabled", "writes are disabled: the server has no API key configured")
    if not key_matches(key, settings.api_key):
        raise APIError(401, "unauthorized", f"missing or wrong {API_KEY_HEADER}", {"WWW-Authenticate": "APIKey"})


ReadAccess = Depends(require_read)
WriteAccess = Depends(require_write)
