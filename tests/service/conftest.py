"""Service fixtures: a loaded micro bundle, a fake index over 8 shape images, and app/client factories."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from clipforge.service.app import create_app
from clipforge.service.deps import maybe_index
from clipforge.service.settings import Settings
from clipforge.service.store import IndexHandle
from tests.service.fakes import FakeIndex, shape_items

WRITE_KEY = "test-write-key"


@pytest.fixture(scope="session")
def bundle(micro_bundle: Path) -> Any:
    from clipforge.encoders.bundle import load_bundle

    return load_bundle(micro_bundle, device="cpu")


@pytest.fixture(scope="session")
def siglip_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from clipforge.encoders.bundle import save_bundle
    from clipforge.encoders.model import build_model, resolve_model_config

    torch.manual_seed(1)
    arch, cfg = resolve_model_config("cf-micro-vit")
    out = tmp_path_factory.mktemp("bundles") / "micro-siglip"
    save_bundle(build_model(cfg, init_logit_bias=-10.0), out, arch=arch, model_cfg=cfg, loss="siglip")
    return out


@pytest.fixture
def fake_index(bundle: Any) -> FakeIndex:
    return FakeIndex(bundle, shape_items())


AppFactory = Callable[..., tuple[FastAPI, TestClient]]
DEFAULTS: dict[str, Any] = {
    "api_key": WRITE_KEY,
    "label_sets": {"shapes": ["circle", "square", "triangle"]},
    "max_labels": 8,
    "max_images": 4,
    "max_text_chars": 50,
    "max_k": 20,
    "max_image_pixels": 200_000,
    "max_upload_bytes": 64_000,
}


@contextmanager
def client_factory(bundle_dir: Path) -> Iterator[AppFactory]:
    """make(index=FakeIndex|None, **settings) -> (app, started TestClient); all closed on exit."""
    with ExitStack() as stack:

        def make(
            index: Any = None, raise_server_exceptions: bool = True, **overrides: Any
        ) -> tuple[FastAPI, TestClient]:
            settings = Settings(**{"bundle": bundle_dir, "max_wait_ms": 1.0, **overrides})
            app = create_app(settings)
            if index is not None:
                handle = IndexHandle(index)
                stack.callback(handle.close)
                app.dependency_overrides[maybe_index] = lambda: handle
            client = TestClient(app, raise_server_exceptions=raise_server_exceptions)
            stack.enter_context(client)
            return app, client

        yield make


@pytest.fixture
def make_client(micro_bundle: Path) -> Iterator[AppFactory]:
    with client_factory(micro_bundle) as make:
        yield make


@pytest.fixture
def client(make_client: AppFactory, fake_index: FakeIndex) -> TestClient:
    """The default server: micro bundle, fake index, writes enabled with WRITE_KEY, one label set, small limits."""
    return make_client(index=fake_index, **DEFAULTS)[1]


@pytest.fixture(scope="module")
def shared_client(micro_bundle: Path, bundle: Any) -> Iterator[TestClient]:
    """Like `client`, but one per test module (for the many read-only bad-input cases)."""
    with client_factory(micro_bundle) as make:
        yield make(index=FakeIndex(bundle, shape_items()), **DEFAULTS)[1]


def run_async(coro: Any) -> Any:
    """asyncio.run on a fresh thread: the session's Playwright (sync API) may own this thread's event loop."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (the OS's choice)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served_in_thread(app: FastAPI) -> Iterator[str]:
    """uvicorn serving `app` on a free 127.0.0.1 port in a thread; its URL once /readyz answers 200."""
    import threading
    import time

    import httpx
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    else:
        pytest.fail("the server did not become ready")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
