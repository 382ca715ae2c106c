"""The app factory: `create_app(settings)`; its lifespan loads the bundle and the index onto `app.state`."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from clipforge.service import payload
from clipforge.service.deps import API_KEY_HEADER
from clipforge.service.engine import Engine, set_encoder_threads
from clipforge.service.errors import install_error_handlers
from clipforge.service.fastpath import EmbedFastPath
from clipforge.service.metrics import Metrics, MetricsMiddleware
from clipforge.service.routers import classify, embed, heads, health, info, items, search
from clipforge.service.settings import Settings
from clipforge.service.store import IndexHandle

log = logging.getLogger("clipforge.service")
STATIC = Path(__file__).parent / "static"
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    metrics: Metrics = app.state.metrics
    engine: Engine | None = None
    index: IndexHandle | None = None
    served_heads: dict[str, Any] = {}
    try:
        if settings.bundle is not None:
            from clipforge.encoders.bundle import load_bundle

            set_encoder_threads(settings)
            bundle = await anyio.to_thread.run_sync(
                functools.partial(
                    load_bundle,
                    settings.bundle,
                    device=settings.device,
                    precision=settings.precision,
                    backend=settings.backend,
                )
            )
            engine = Engine(bundle, settings, on_batch=metrics.observe_batch)
            await anyio.to_thread.run_sync(engine.start_decode_pool)
            engine.start()
            for kind in ("text", "image"):
                metrics.watch_queue(kind, functools.partial(engine.batcher.queue_depth, kind))
            log.info("loaded bundle %s (%s)", settings.bundle, bundle.fingerprint[:12])
            if settings.index is not None:
                index = await IndexHandle.open(str(settings.index), bundle, mmap=settings.index_mmap)
                log.info("opened index %s", settings.index)
            if settings.heads:
                from clipforge.service.fusion import load_heads

                served_heads = await anyio.to_thread.run_sync(load_heads, settings.heads, bundle.fingerprint)
                log.info("loaded heads %s", ", ".join(served_heads))
        elif settings.index is not None or settings.heads:
            raise ValueError("an index or a head needs a bundle: set CLIPFORGE_BUNDLE / --bundle")
        app.state.engine, app.state.index, app.state.heads = engine, index, served_heads
        yield
    finally:
        app.state.engine, app.state.index, app.state.heads = None, None, {}
        if engine is not None:
            await engine.stop()
        if index is not None:
            await anyio.to_thread.run_sync(index.close)
        metrics.close()


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the request models that routes parse themselves (JSON or multipart)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in payload.REQUEST_MODELS:
            components[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app; nothing is loaded until its lifespan starts (uvicorn or `with TestClient(app)`)."""
    settings = settings or Settings()
    app = FastAPI(
        title="clipforge",
        version="1.0",
        description="Zero-shot classification, embeddings and image search with a CLIP-style model bundle. "
        f"Write endpoints need the `{API_KEY_HEADER}` header.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.engine = None
    app.state.index = None
    app.state.heads = {}
    install_error_handlers(app)
    for module in (health, info, classify, embed, search, items, heads):
        app.include_router(module.router)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(EmbedFastPath)  # innermost: CORS and metrics still see its requests
    if settings.cors_origins:  # closed unless configured
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Content-Type", API_KEY_HEADER],
        )
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app
