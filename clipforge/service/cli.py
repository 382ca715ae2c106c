"""`clipforge serve`: run the app on uvicorn. Flags override CLIPFORGE_* environment variables."""

from __future__ import annotations

import argparse
from typing import Any


def check_port_free(host: str, port: int) -> None:
    """One line now, before the model loads, rather than uvicorn's error log after it when the address is taken."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as exn:
            raise OSError(f"cannot listen on {host}:{port}: {exn.strerror or exn} (--host / --port)") from None


def preflight(settings: Any) -> None:
    """Refuse to start, with one clear line, on a missing or corrupt bundle or index, or an index of another
    bundle: found here, not in the app's lifespan, where uvicorn would print a traceback and exit 3."""
    from clipforge.encoders.bundle import verify_bundle

    meta = verify_bundle(settings.bundle)  # BundleError (a ValueError) names what is wrong
    if settings.index is not None:
        from clipforge.index import Index

        index = Index.open(settings.index, mmap=True)  # every file there, of its size, readable
        fingerprint = index.fingerprint
        index.close()
        if fingerprint != meta["weights_sha256"]:
            raise ValueError(
                f"index {settings.index} was built with another bundle (fingerprint {fingerprint[:12]}), "
                f"not {settings.bundle} ({meta['weights_sha256'][:12]})"
            )
    if settings.heads:  # missing, corrupt, of another bundle, or two of one name: HeadError (a ValueError)
        from clipforge.service.fusion import load_heads

        load_heads(settings.heads, meta["weights_sha256"])


def settings_or_one_line(settings_cls: Any, overrides: dict[str, Any]) -> Any:
    """Settings from flags + environment, or ValueError naming the first bad one as the user gave it (a flag,
    or a CLIPFORGE_* variable) instead of pydantic's multi-line report."""
    from pydantic import ValidationError

    try:
        return settings_cls(**overrides)
    except ValidationError as exn:
        first = exn.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "settings"
        flag = FLAGS.get(name, name).replace("_", "-")  # the setting `heads` is the repeatable flag --head
        where = f"--{flag}" if name in overrides else f"CLIPFORGE_{name.upper()}"
        more = f" (and {exn.error_count() - 1} more)" if exn.error_count() > 1 else ""
        raise ValueError(f"{where}: {first['msg']}, got {first.get('input')!r}{more}") from None


# the settings `serve` takes as flags: setting -> the flag's argparse dest
FLAGS = {
    "bundle": "bundle",
    "index": "index",
    "host": "host",
    "port": "port",
    "device": "device",
    "workers": "workers",
    "heads": "head",
}


def cmd_serve(a: argparse.Namespace) -> int:
    from clipforge.service.settings import Settings

    flags = {k: getattr(a, dest) for k, dest in FLAGS.items() if getattr(a, dest) is not None}
    return serve(settings_or_one_line(Settings, flags), log_level=a.log_level, access_log=a.access_log)


def serve(settings: Any, log_level: str = "info", access_log: bool = True) -> int:
    """Check the bundle and index (`preflight`), then serve per `settings` until stopped."""
    import json
    import os
    import tempfile

    import uvicorn

    from clipforge.service.app import create_app
    from clipforge.service.metrics import MULTIPROC_ENV

    if settings.bundle is None:
        raise ValueError("no bundle: give --bundle DIR or set CLIPFORGE_BUNDLE")
    preflight(settings)
    check_port_free(settings.host, settings.port)
    run = {
        "host": settings.host,
        "port": settings.port,
        "log_level": log_level,
        "access_log": access_log,
        "timeout_graceful_shutdown": 10,
    }
    overrides = {k: getattr(settings, k) for k in FLAGS if getattr(settings, k) is not None}
    if settings.workers == 1:  # one process, one model: batching across requests happens inside it
        uvicorn.run(create_app(settings), **run)
        return 0
    # several processes, each building its app from the environment: pass the flags on through it, and give
    # the workers one directory for their metrics (a scrape of any of them adds all up)
    os.environ.update(
        {
            f"CLIPFORGE_{k.upper()}": json.dumps([str(h) for h in v]) if k == "heads" else str(v)
            for k, v in overrides.items()
        }
    )
    with tempfile.TemporaryDirectory(prefix="clipforge-metrics-") as metrics_dir:
        os.environ.setdefault(MULTIPROC_ENV, metrics_dir)
        uvicorn.run("clipforge.service.app:create_app", factory=True, workers=settings.workers, **run)
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `serve` subcommand to the `clipforge` parser's subparsers."""
    s = subparsers.add_parser(
        "serve",
        help="serve a bundle (and optionally an index and fusion heads) over HTTP: classify, embed, search, heads, web page",
        description="Settings not given as flags come from CLIPFORGE_* environment variables "
        '(e.g. CLIPFORGE_API_KEY, CLIPFORGE_MAX_K, CLIPFORGE_LABEL_SETS=\'{"pets": ["cat", "dog"]}\').',
    )
    s.add_argument("--bundle", help="model bundle directory (or CLIPFORGE_BUNDLE)")
    s.add_argument("--index", help="index directory (or CLIPFORGE_INDEX); without one, search is unavailable")
    s.add_argument("--host", help="bind address (default 127.0.0.1, or CLIPFORGE_HOST)")
    s.add_argument("--port", type=int, help="port (default 8000, or CLIPFORGE_PORT)")
    s.add_argument("--device", help="auto, cpu, cuda, cuda:1, mps (default auto)")
    s.add_argument(
        "--head",
        action="append",
        metavar="[NAME=]DIR",
        help="a fusion head trained on this bundle (its folder or the fuse train run folder), served under "
        "/v1/heads as NAME or the name it was trained with (repeatable; or CLIPFORGE_HEADS)",
    )
    s.add_argument("--workers", type=int, help="server processes, each with its own model copy (default 1)")
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    s.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True)
    s.set_defaults(func=cmd_serve)
    return s
