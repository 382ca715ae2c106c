"""The service over a real `index.Index` built in the test (FAISS + SQLite), loaded by the app's lifespan."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.service.conftest import WRITE_KEY
from tests.service.fakes import COLORS, png_bytes, shape_items
from tests.service.test_bad_input import assert_error

pytest.importorskip("index")


@pytest.fixture(scope="module")
def real_index(micro_bundle: Path, bundle: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from index import Index

    folder = tmp_path_factory.mktemp("service-images")
    for i, (data, caption, meta) in enumerate(shape_items()):
        (folder / f"img{i}.png").write_bytes(data)
        (folder / f"img{i}.txt").write_text(caption)
        (folder / f"img{i}.json").write_text(json.dumps(meta))
    out = tmp_path_factory.mktemp("service-index") / "idx"
    Index.build(bundle, str(folder), out, progress=False).close()
    return out


@pytest.mark.parametrize("mmap", [False, True], ids=["in-ram", "mmap"])
def test_real_index_end_to_end(micro_bundle: Path, real_index: Path, tmp_path: Path, mmap: bool) -> None:
    import shutil

    index_dir = tmp_path / "idx"
    shutil.copytree(real_index, index_dir)  # this test writes to it
    app = create_app(
        Settings(
            bundle=micro_bundle, index=index_dir, api_key=WRITE_KEY, max_wait_ms=1.0, max_offset=20_000, index_mmap=mmap
        )
    )
    with TestClient(app) as c:
        assert c.get("/readyz").json() == {"status": "ready", "model": True, "index": True}
        assert c.get("/v1/info").json()["index"]["count"] == 8

        r = c.post("/v1/search", json={"text": "a red circle", "k": 8})
        hits = r.json()["results"]
        assert r.status_code == 200 and len(hits) == 8
        assert all("path" not in h["metadata"] and "source" not in h["metadata"] for h in hits)
        scores = [h["score"] for h in hits]
        assert scores == sorted(scores, reverse=True)

        # the image of a hit is the file that was indexed; an uploaded copy of it finds it first
        target = next(h for h in hits if h["caption"] == "a blue square")
        img = c.get(target["image_url"])
        assert img.status_code == 200 and img.headers["content-type"] == "image/png"
        assert img.content == png_bytes(COLORS["blue"], shape="square")
        r = c.post("/v1/search", files=[("image", ("q.png", img.content, "image/png"))], data={"k": "1"})
        assert r.json()["results"][0]["id"] == target["id"]
        assert r.json()["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)

        by_id = c.post("/v1/search", json={"id": target["id"], "k": 3}).json()["results"]
        assert len(by_id) == 3 and target["id"] not in [h["id"] for h in by_id]
        filtered = c.post("/v1/search", json={"text": "x", "filters": {"color": "green"}, "target": "captions"})
        assert {h["metadata"]["color"] for h in filtered.json()["results"]} == {"green"}

        item = c.get(f"/v1/items/{target['id']}").json()
        assert item["caption"] == "a blue square" and item["width"] == 48 and item["metadata"]["shape"] == "square"

        key = {"X-API-Key": WRITE_KEY}
        new = png_bytes((10, 200, 200), shape="square")
        r = c.post("/v1/items", headers=key, json={"images": [base64.b64encode(new).decode()], "captions": ["teal"]})
        assert r.status_code == 201, r.text
        (new_id,) = r.json()["ids"]
        assert c.get(f"/v1/items/{new_id}").json()["caption"] == "teal"
        assert c.get(f"/v1/items/{new_id}/image").status_code == 200
        big = {"images": [base64.b64encode(new).decode()], "metadata": [{"n": 2**70, "nested": {"a": [1, None]}}]}
        assert c.post("/v1/items", headers=key, json=big).status_code in (201, 422)
        assert c.delete(f"/v1/items/{new_id}", headers=key).json() == {"removed": 1}
        assert_error(c.get(f"/v1/items/{new_id}"), 404, "not_found")
        assert_error(c.post("/v1/search", json={"id": 99999}), 404, "not_found")
        # values the index's SQLite could not hold are refused up front
        assert_error(c.post("/v1/search", json={"id": 2**70}), 422, "validation_error")
        assert_error(c.post("/v1/search", json={"text": "a", "filters": {"width": 2**70}}), 422, "invalid_filter")
        assert_error(c.post("/v1/search", json={"text": "a", "filters": {"no such field!": 1}}), 422, "invalid_filter")
        r = c.post("/v1/search", json={"text": "a", "filters": {"color": ["red", "blue"], "shape": "circle"}})
        assert sorted(h["caption"] for h in r.json()["results"]) == ["a blue circle", "a red circle"]
        # the index's own refusals (here: offset + k over its paging depth) are a 422, not a 500
        assert_error(c.post("/v1/search", json={"text": "a", "k": 10, "offset": 19_995}), 422, "invalid_query")


def test_index_of_another_bundle_is_refused_at_startup(siglip_bundle: Path, real_index: Path) -> None:
    from index import IndexMismatchError

    app = create_app(Settings(bundle=siglip_bundle, index=real_index))
    with pytest.raises(IndexMismatchError), TestClient(app):
        pass
