"""POST /v1/embed's fast path answers exactly as the FastAPI route does, and hands everything else to it."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from clipforge.service import fastpath
from clipforge.service.deps import require_read
from tests.service.conftest import DEFAULTS, AppFactory
from tests.service.fakes import COLORS, png_bytes

RED = png_bytes(COLORS["red"])
BLUE = png_bytes(COLORS["blue"], shape="square", fmt="JPEG")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def pair(make_client: AppFactory, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any, list[str]]:
    """(fast client, route-only client, log of fast-path outcomes). The second overrides the read check with
    itself, which sends every request to the route."""
    outcomes: list[str] = []
    real = fastpath.EmbedFastPath._embed

    async def spy(self: Any, *args: Any) -> bytes:
        try:
            out = await real(self, *args)
        except Exception as exn:
            outcomes.append(type(exn).__name__)
            raise
        outcomes.append("answered")
        return out

    monkeypatch.setattr(fastpath.EmbedFastPath, "_embed", spy)
    _, fast = make_client(**DEFAULTS)
    app, route = make_client(**DEFAULTS)
    app.dependency_overrides[require_read] = require_read
    return fast, route, outcomes


def test_fast_path_answers_like_the_route(pair: tuple[Any, Any, list[str]]) -> None:
    fast, route, outcomes = pair
    body = {"texts": ["a red circle", "a blue square"], "images": [b64(RED), "data:image/jpeg;base64," + b64(BLUE)]}
    a, b = fast.post("/v1/embed", json=body), route.post("/v1/embed", json=body)
    assert outcomes == ["answered"]  # the route-only client never entered the fast path
    assert a.status_code == b.status_code == 200 and a.headers["content-type"] == b.headers["content-type"]
    assert a.content == b.content  # the same bytes, not just the same JSON values
    assert len(a.json()["image_embeddings"]) == 2 and len(a.json()["text_embeddings"]) == 2
    # a multipart upload of the same images goes to the route, with the same vectors
    m = fast.post(
        "/v1/embed",
        files=[("images", ("r.png", RED, "image/png")), ("images", ("b.jpg", BLUE, "image/jpeg"))],
        data={"texts": ["a red circle", "a blue square"]},
    )
    assert m.json() == a.json() and outcomes == ["answered"]


@pytest.mark.parametrize(
    "body",
    [
        {"texts": [""]},  # empty text
        {"texts": ["x" * 51]},  # over max_text_chars
        {"texts": ["a"] * 10_000},  # over max_texts
        {"images": ["not base64 !!"]},
        {"images": [b64(b"definitely not an image")]},
        {"images": [b64(RED)] * 5},  # over max_images
        {"images": b64(RED)},  # a string where a list belongs
        {"texts": [1, 2]},
        {"texts": ["ok"], "extra": 1},
        {},
        [1, 2],
        "just a string",
    ],
)
def test_bad_json_bodies_get_the_routes_errors(pair: tuple[Any, Any, list[str]], body: Any) -> None:
    fast, route, outcomes = pair
    a, b = fast.post("/v1/embed", json=body), route.post("/v1/embed", json=body)
    assert 400 <= a.status_code < 500 and (a.status_code, a.json()) == (b.status_code, b.json())
    assert outcomes and "answered" not in outcomes  # it looked, declined, and the route answered


def test_invalid_json_wrong_type_and_oversize_bodies(pair: tuple[Any, Any, list[str]]) -> None:
    fast, route, _ = pair
    for kwargs in (
        {"content": b"{not json", "headers": {"content-type": "application/json"}},
        {"content": b'{"texts": ["a"]}', "headers": {"content-type": "text/plain"}},
        {
            "content": json.dumps({"texts": ["a" * 40] * 200_000}).encode(),
            "headers": {"content-type": "application/json"},
        },
    ):
        a, b = fast.post("/v1/embed", **kwargs), route.post("/v1/embed", **kwargs)
        assert 400 <= a.status_code < 500 and (a.status_code, a.json()) == (b.status_code, b.json()), a.text


def test_read_key_is_enforced_on_the_fast_path(make_client: AppFactory) -> None:
    _, c = make_client(**DEFAULTS, read_api_key="reader")
    body = {"texts": ["a"]}
    assert c.post("/v1/embed", json=body).status_code == 401
    assert c.post("/v1/embed", json=body, headers={"X-API-Key": "wrong"}).status_code == 401
    assert c.post("/v1/embed", json=body, headers={"X-API-Key": "reader"}).status_code == 200
    assert c.post("/v1/embed", json=body, headers={"X-API-Key": DEFAULTS["api_key"]}).status_code == 200
    assert (
        c.post("/v1/embed", json=body, headers={"X-API-Key": "rédér".encode()}).status_code == 401
    )  # non-ASCII: no crash
