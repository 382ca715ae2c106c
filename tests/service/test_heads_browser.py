"""The page's "ask about an image" panel in headless Chromium: pick a head, an image and a question, and the
bars show what the API answers; the panel is hidden when the server has no head."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from clipforge.service.app import create_app
from clipforge.service.settings import Settings
from tests.service.conftest import served_in_thread
from tests.service.fakes import COLORS, png_bytes
from tests.service.test_heads import make_head

pytestmark = pytest.mark.slow


@contextmanager
def live(settings: Settings) -> Iterator[str]:
    with served_in_thread(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def head_dirs(bundle: Any, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("page-heads")
    fp, dim = bundle.fingerprint, bundle.embed_dim
    return [
        make_head(root / "red-circle", "concat", "binary", ["no", "yes"], fp, dim, seed=1),
        make_head(root / "shape", "multiplicative", "multiclass", ["circle", "square", "none"], fp, dim, seed=2),
    ]


@contextmanager
def open_page(chromium: Any, url: str) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready=true]")
    try:
        yield page
    finally:
        context.close()
    assert not errors, errors  # no JavaScript errors on the page


def test_ask_about_an_image(chromium: Any, micro_bundle: Path, head_dirs: list[Path], tmp_path: Path) -> None:
    image = tmp_path / "red.png"
    image.write_bytes(png_bytes(COLORS["red"]))
    with live(Settings(bundle=micro_bundle, heads=head_dirs, max_wait_ms=1.0)) as url, open_page(chromium, url) as page:
        assert page.is_visible("#ask-panel")
        assert page.eval_on_selector_all("#head-select option", "os => os.map(o => o.value)") == ["red-circle", "shape"]
        page.select_option("#head-select", "shape")
        assert "multiclass" in page.text_content("#head-info")
        page.set_input_files("#ask-image-input", str(image))
        page.wait_for_selector("#ask-preview:not([hidden])")
        page.fill("#ask-text", "what shape is it?")
        page.click("#ask-button")
        page.locator("#ask-results li").nth(2).wait_for()
        shown = page.eval_on_selector_all(
            "#ask-results li",
            "els => els.map(e => [e.querySelector('.label').textContent, Number(e.dataset.score),"
            " parseFloat(e.querySelector('.fill').style.width), e.classList.contains('top')])",
        )
        api = httpx.post(
            f"{url}/v1/heads/shape/predict",
            files=[("images", ("red.png", image.read_bytes(), "image/png"))],
            data={"texts": ["what shape is it?"]},
        ).json()
        result = api["results"][0]
        # one bar per label, in the head's order, its width the API's probability; the top label marked
        assert [s[0] for s in shown] == api["labels"] == ["circle", "square", "none"]
        assert [s[1] for s in shown] == pytest.approx([result["probabilities"][x] for x in api["labels"]], abs=1e-6)
        assert [s[2] for s in shown] == pytest.approx([100 * s[1] for s in shown], abs=0.06)
        assert [s[0] for s in shown if s[3]] == [result["top"]]
        assert page.is_hidden("#ask-error")
        page.screenshot(path=str(tmp_path / "ask-panel.png"), full_page=True)

        page.fill("#ask-text", "")  # a mistake is shown in the panel, not thrown away
        page.click("#ask-button")
        page.wait_for_selector("#ask-error:not([hidden])")
        assert "type a question" in page.text_content("#ask-error")


def test_panel_hidden_without_heads(chromium: Any, micro_bundle: Path) -> None:
    with live(Settings(bundle=micro_bundle, max_wait_ms=1.0)) as url, open_page(chromium, url) as page:
        assert page.is_hidden("#ask-panel")
        assert page.is_visible("#classify-panel")
