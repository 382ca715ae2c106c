"""Request helpers that several routers (and the fast path) share, so that no router imports another."""

from __future__ import annotations

from starlette.requests import Request

from clipforge.service.errors import APIError
from clipforge.service.settings import Settings


def check_text(text: str, settings: Settings, where: str) -> str:
    """A label, template, caption or query text within the limits, or a 422 naming `where`."""
    if len(text) > settings.max_text_chars:
        raise APIError(422, "text_too_long", f"{where}: over {settings.max_text_chars} characters")
    if not text.strip():
        raise APIError(422, "empty_text", f"{where}: empty text")
    return text


def image_url(request: Request, item_id: int) -> str:
    """Where an indexed item's image is served (behind a proxy's root_path too)."""
    return f"{request.scope.get('root_path', '')}/v1/items/{item_id}/image"
