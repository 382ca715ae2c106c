"""`clipforge serve`: run the app on uvicorn. Flags override CLIPFORGE_* environment variables."""

from __future__ import annotations

import argparse
from typing import Any


def preflight(settings: Any) -> None:
    """Refuse to start, with one clear line, on a missing bundle or index or an index of another bundle."""
    from pathlib import Path

    from encoders.bundle import read_bundle_meta

    meta = read_bundle_meta(settings.bundle)  # BundleError (a ValueError) names what is wrong
    if settings.index is not None:
        from index.store import read_manifest

        fingerprint = read_manifest(Path(settings.index))["fingerprint"]
        if fingerprint != meta["weights_sha256"]:
            raise ValueError(f"index {settings.index} was built with another bundle (fingerprint {fingerprint[:12]}), "
                             f"not {settings.bundle} ({meta['weights_sha256'][:12]})")  # fmt: skip


def cmd_serve(a: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    overrides: dict[str, Any] = {
        k: v for k, v in {"bundle": a.bundle, "index": a.index, "host": a.host, "port": a.port}.items() if v is not None
    }
    if a.device is not None:
        overrides["device"] = a.device
    settings = Settings(**overrides)
    if settings.bundle is None:
        raise ValueError("no bundle: give --bundle DIR or set CLIPFORGE_BUNDLE")
    preflight(settings)
    # one process, one model: batching across requests happens inside it (more workers = more model copies)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=a.log_level,
        access_log=a.access_log,
        timeout_graceful_shutdown=10,
    )
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `serve` subcommand to the `clipforge` parser's subparsers."""
    s = subparsers.add_parser(
        "serve",
        help="serve a bundle (and optionally an index) over HTTP: classify, embed, search, web page",
        description="Settings not given as flags come from CLIPFORGE_* environment variables "
        '(e.g. CLIPFORGE_API_KEY, CLIPFORGE_MAX_K, CLIPFORGE_LABEL_SETS=\'{"pets": ["cat", "dog"]}\').',
    )
    s.add_argument("--bundle", help="model bundle directory (or CLIPFORGE_BUNDLE)")
    s.add_argument("--index", help="index directory (or CLIPFORGE_INDEX); without one, search is unavailable")
    s.add_argument("--host", help="bind address (default 127.0.0.1, or CLIPFORGE_HOST)")
    s.add_argument("--port", type=int, help="port (default 8000, or CLIPFORGE_PORT)")
    s.add_argument("--device", help="auto, cpu, cuda, cuda:1, mps (default auto)")
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    s.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True)
    s.set_defaults(func=cmd_serve)
    return s
