"""The web page in headless Chromium (Playwright): classify an image and search by text, checked on the page."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from clipforge.service.app import create_app
from clipforge.service.deps import maybe_index
from clipforge.service.settings import Settings
from clipforge.service.store import IndexHandle
from tests.service.conftest import served_in_thread
from tests.service.fakes import COLORS, FakeIndex, png_bytes, shape_items

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live_server(micro_bundle: Path, bundle: Any) -> Iterator[str]:
    """uvicorn on 127.0.0.1 (a free port) in a thread, serving the micro bundle and a fake index."""
    app = create_app(Settings(bundle=micro_bundle, max_wait_ms=1.0))
    handle = IndexHandle(FakeIndex(bundle, shape_items()))
    app.dependency_overrides[maybe_index] = lambda: handle
    with served_in_thread(app) as url:
        yield url
    handle.close()


@pytest.fixture
def page(chromium: Any, live_server: str) -> Iterator[Any]:
    context = chromium.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(live_server + "/")
    page.wait_for_selector("body[data-ready=true]")
    yield page
    context.close()
    assert not errors, errors  # no JavaScript errors on the page


def test_classify_through_the_page(page: Any, live_server: str, tmp_path: Path) -> None:
    image = tmp_path / "red.png"
    image.write_bytes(png_bytes(COLORS["red"]))
    labels = ["red circle", "blue square", "green triangle"]
    page.set_input_files("#image-input", str(image))
    page.wait_for_selector("#preview:not([hidden])")
    page.fill("#labels-input", "red circle\nblue square, green triangle")
    page.click("#classify-button")
    page.locator("#classify-results li").nth(2).wait_for()  # (the page's CSP forbids eval: no wait_for_function)

    shown = page.eval_on_selector_all(
        "#classify-results li",
        "els => els.map(e => [e.querySelector('.label').textContent, Number(e.dataset.score),"
        " parseFloat(e.querySelector('.fill').style.width), e.querySelector('.sim').textContent])",
    )
    # the bars show what the API answers for the same upload, best first, widths proportional to scores
    api = httpx.post(
        f"{live_server}/v1/classify",
        files=[("images", ("red.png", image.read_bytes(), "image/png"))],
        data={"labels": labels},
    ).json()["results"][0]["labels"]
    assert [s[0] for s in shown] == [x["label"] for x in api]
    assert [s[1] for s in shown] == pytest.approx([x["score"] for x in api], abs=1e-6)
    assert [s[2] for s in shown] == pytest.approx([100 * x["score"] for x in api], abs=0.06)
    assert sum(s[2] for s in shown) == pytest.approx(100, abs=0.2)
    assert [s[3] for s in shown] == [f"cos {x['similarity']:.3f}" for x in api]
    assert page.is_hidden("#classify-error")


def test_classify_error_is_shown(page: Any, tmp_path: Path) -> None:
    image = tmp_path / "dup.png"
    image.write_bytes(png_bytes())
    page.set_input_files("#image-input", str(image))
    page.fill("#labels-input", "cat, cat")
    page.click("#classify-button")
    page.wait_for_selector("#classify-error:not([hidden])")
    assert "duplicate_labels" in page.text_content("#classify-error")


def test_search_through_the_page(page: Any, live_server: str) -> None:
    page.fill("#search-input", "a yellow square")
    page.click("#search-button")
    page.locator("#search-results figure").first.wait_for()
    # every image in the grid actually loaded from /v1/items/{id}/image
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        widths = page.eval_on_selector_all(
            "#search-results img", "els => els.map(i => i.complete ? i.naturalWidth : -1)"
        )
        if widths and all(w >= 0 for w in widths):
            break
        time.sleep(0.05)
    assert widths == [48] * 8, widths
    shown = page.eval_on_selector_all(
        "#search-results figure",
        "els => els.map(e => [Number(e.dataset.id), e.querySelector('figcaption').textContent])",
    )
    api = httpx.post(f"{live_server}/v1/search", json={"text": "a yellow square", "k": 12}).json()["results"]
    assert [i for i, _ in shown] == [h["id"] for h in api] and len(shown) == 8
    assert all(cap.startswith(h["caption"]) for (_, cap), h in zip(shown, api, strict=True))
    assert "8 indexed items" in page.text_content("#model-info")


def test_typing_the_read_key_loads_the_model_line_and_a_server_without_index_has_no_search(
    chromium: Any, micro_bundle: Path
) -> None:
    """With a read key required, the page first shows the 401; typing the key asked only for the heads again,
    so the header kept the error. Without an index, the search panel showed and failed on use."""
    app = create_app(Settings(bundle=micro_bundle, max_wait_ms=1.0, read_api_key="sekret"))
    with served_in_thread(app) as url:
        context = chromium.new_context()
        page = context.new_page()
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready=true]")
        assert "X-API-Key" in page.text_content("#model-info")
        page.fill("#api-key", "sekret")
        page.dispatch_event("#api-key", "change")
        page.wait_for_selector("#model-info:has-text('no index')")  # (the page's CSP forbids evaluated strings)
        assert "dim" in page.text_content("#model-info")
        assert not page.is_visible("#search-panel")
        context.close()
