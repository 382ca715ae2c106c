"""POST /v1/embed's common case without FastAPI's per-request machinery.

A one-image embed request with a small model costs the server more CPU in routing, dependency solving and
response validation than in the model (benchmarks/RESULTS.md, service section). This pure ASGI layer answers
the common case — a JSON body of base64 images and/or texts that passes every check — with the route's own
checks (service.payload, service.routers), the same batcher, and the same JSON (floats written as Python
writes them). Anything else (multipart, a key mismatch, invalid JSON, a failed check, a bad image, no
model loaded) is handed on, body replayed, to the FastAPI route, so every error, status code and message
comes from one place. The route stays the documented one in the OpenAPI schema.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pydantic_core
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clipforge.service.deps import API_KEY_HEADER, get_engine, get_settings, key_matches, maybe_engine, require_read
from clipforge.service.payload import check_text, decode_base64_image, loads

PATH = "/v1/embed"
FIELDS = frozenset(("texts", "images"))
OVERRIDABLE = frozenset((get_engine, get_settings, maybe_engine, require_read))
ROUTE = SimpleNamespace(path=PATH)  # what MetricsMiddleware reads from scope["route"]
_KEY_HEADER = API_KEY_HEADER.lower().encode()


class Fallback(Exception):
    """Not the common case: let the FastAPI route answer."""


class EmbedFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        app = scope["app"]
        settings, engine = app.state.settings, app.state.engine
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if (
            engine is None
            or not OVERRIDABLE.isdisjoint(app.dependency_overrides)  # a test swapped what this path reads
            or ctype != b"application/json"
            or not declared.isdigit()
            or int(declared) > settings.max_request_bytes
            or (settings.reads_protected and not _key_ok(headers, settings))
        ):
            await self.app(scope, receive, send)
            return
        body = await _read(receive)
        if body is None:  # the client went away before sending its body: nobody to answer
            scope["route"] = ROUTE  # (MetricsMiddleware counts it as 499 under the route)
            return
        try:
            payload = await self._embed(body, settings, engine)
        except Exception:  # Fallback, an APIError, anything: the route answers it, as it would have
            await self.app(scope, _replay(body, receive), send)
            return
        scope["route"] = ROUTE  # /metrics labels these requests like the route's own
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def _embed(self, body: bytes, settings: Any, engine: Any) -> bytes:
        data = loads(body)  # invalid JSON raises: the route answers it
        if not isinstance(data, dict) or not FIELDS.issuperset(data):
            raise Fallback
        texts, images = data.get("texts"), data.get("images")
        for value in (texts, images):
            if value is not None and (type(value) is not list or any(type(v) is not str for v in value)):
                raise Fallback
        texts, images = texts or [], images or []
        if not texts and not images or len(texts) > settings.max_texts or len(images) > settings.max_images:
            raise Fallback
        texts = [check_text(t, settings, f"texts[{i}]") for i, t in enumerate(texts)]
        blobs = [decode_base64_image(s, settings, f"images[{i}]") for i, s in enumerate(images)]
        image_features = await engine.encode_images(blobs) if blobs else None
        text_features = await engine.encode_texts(texts) if texts else None
        # the bytes FastAPI writes for the route's EmbedResponse (same keys, order and float repr), with the
        # serializer it uses (pydantic's, in Rust): ~10x faster than json.dumps on a vector of floats
        return pydantic_core.to_json(
            {
                "dim": engine.embed_dim,
                "fingerprint": engine.fingerprint,
                "text_embeddings": [] if text_features is None else text_features.tolist(),
                "image_embeddings": [] if image_features is None else image_features.tolist(),
            }
        )


def _key_ok(headers: dict[bytes, bytes], settings: Any) -> bool:
    raw = headers.get(_KEY_HEADER)
    try:
        return raw is not None and key_matches(raw.decode("latin-1"), settings.read_api_key, settings.api_key)
    except UnicodeDecodeError:
        return False


async def _read(receive: Receive) -> bytes | None:
    """The whole body (the server enforces its declared length, which was checked against the limit);
    None if the client disconnected first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that first yields the body already read, then defers to the server's (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
