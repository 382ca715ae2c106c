"""The HTTP service: `create_app(settings)` (FastAPI), run by `clipforge serve`. Imports nothing heavy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from clipforge.service.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    from clipforge.service.app import create_app as _create_app

    return _create_app(settings)


__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "Settings":
        from clipforge.service.settings import Settings

        return Settings
    raise AttributeError(name)
