"""The service over a real `index.Index` built in the test (FAISS + SQLite), loaded by the app's lifespan."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from clipforge.service.app import create_app
from clipforge.service.settings import Settings
from tests.service.conftest import WRITE_KEY, AppFactory
from tests.service.fakes import COLORS, png_bytes, shape_items
from tests.service.test_bad_input import assert_error

pytest.importorskip("clipforge.index")


@pytest.fixture(scope="module")
def real_index(micro_bundle: Path, bundle: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from clipforge.index import Index

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
        assert_error(c.post("/v1/search", json={"text": "a", "filters": {'no "such" field': 1}}), 422, "invalid_filter")
        assert_error(c.post("/v1/search", json={"text": "a", "filters": {"exif..iso": 1}}), 422, "invalid_filter")
        r = c.post("/v1/search", json={"text": "a", "filters": {"exif.iso": 100}})  # a path into nested metadata
        assert r.status_code == 200 and r.json()["results"] == []
        r = c.post("/v1/search", json={"text": "a", "filters": {"color": ["red", "blue"], "shape": "circle"}})
        assert sorted(h["caption"] for h in r.json()["results"]) == ["a blue circle", "a red circle"]
        # the index's own refusals (here: offset + k over its paging depth) are a 422, not a 500
        assert_error(c.post("/v1/search", json={"text": "a", "k": 10, "offset": 19_995}), 422, "invalid_query")


def test_index_of_another_bundle_is_refused_at_startup(siglip_bundle: Path, real_index: Path) -> None:
    from clipforge.index import IndexMismatchError

    app = create_app(Settings(bundle=siglip_bundle, index=real_index))
    with pytest.raises(IndexMismatchError), TestClient(app):
        pass


def test_values_that_could_be_stored_but_not_sent_back_are_refused(
    micro_bundle: Path, real_index: Path, tmp_path: Path
) -> None:
    """Lone surrogates, NaN/Infinity and 1e400 in metadata, captions, labels or filters: a 4xx on the way in,
    nothing stored, and every later read and filtered search still answers (they used to break it: 500s)."""
    import shutil

    index_dir = tmp_path / "idx"
    shutil.copytree(real_index, index_dir)
    app = create_app(Settings(bundle=micro_bundle, index=index_dir, api_key=WRITE_KEY, max_wait_ms=1.0))
    image = base64.b64encode(png_bytes()).decode()
    key = {"X-API-Key": WRITE_KEY, "content-type": "application/json"}
    with TestClient(app, raise_server_exceptions=False) as c:
        raw_bodies = [  # written by hand: Python's json would not produce them
            ("/v1/items", '{"images": ["IMG"], "metadata": [{"x": NaN}]}', 400),
            ("/v1/items", '{"images": ["IMG"], "metadata": [{"x": Infinity}]}', 400),
            ("/v1/items", '{"images": ["IMG"], "metadata": [{"x": 1e400}]}', 422),
            ("/v1/items", '{"images": ["IMG"], "metadata": [{"x": [1, {"y": -1e999}]}]}', 422),
            ("/v1/items", '{"images": ["IMG"], "metadata": [{"x": "a\\ud800b"}]}', 400),
            ("/v1/items", '{"images": ["IMG"], "metadata": [{"a\\udfffb": 1}]}', 400),
            ("/v1/items", '{"images": ["IMG"], "captions": ["a\\ud800b"]}', 400),
            ("/v1/classify", '{"images": ["IMG"], "labels": ["a\\ud800b", "b"]}', 400),
            ("/v1/classify", '{"images": ["IMG"], "labels": ["a", "b"], "templates": ["\\ud800{}"]}', 400),
            ("/v1/search", '{"text": "a", "filters": {"color": "a\\ud800b"}}', 400),
            ("/v1/search", '{"text": "a", "filters": {"color": 1e400}}', 422),
        ]
        for path, body, status in raw_bodies:
            assert_error(c.post(path, content=body.replace("IMG", image).encode(), headers=key), status)
        # the multipart form's metadata field is JSON too
        files = [("images", ("x.png", png_bytes(), "image/png"))]
        for meta, status in (('[{"x": NaN}]', 400), ('[{"x": 1e400}]', 422)):
            r = c.post("/v1/items", files=files, data={"metadata": meta}, headers={"X-API-Key": WRITE_KEY})
            assert_error(r, status)
        # metadata is a record about an image, not a document store: 2 MB of it, or 5,000 keys, is refused
        for meta in ({"x": "a" * 2_000_000}, {f"k{i}": i for i in range(5000)}):
            r = c.post("/v1/items", json={"images": [image], "metadata": [meta]}, headers={"X-API-Key": WRITE_KEY})
            assert_error(r, 422, "invalid_metadata")
        # too many filter fields would overflow SQLite's expression depth: refused before the query
        assert_error(
            c.post("/v1/search", json={"text": "a", "filters": {f"k{i}": 1 for i in range(999)}}), 422, "invalid_filter"
        )
        assert c.post("/v1/search", json={"text": "a", "filters": {f"k{i}": 1 for i in range(64)}}).status_code == 200

        assert c.get("/v1/info").json()["index"]["count"] == 8  # nothing was added
        r = c.post("/v1/search", json={"text": "a red circle", "k": 8, "filters": {"color": "red"}})
        assert (
            r.status_code == 200
            and r.json()["results"]
            and all(h["metadata"]["color"] == "red" for h in r.json()["results"])
        )
        assert all(c.get(f"/v1/items/{i}").status_code == 200 for i in range(8))
        assert 'status="500"' not in c.get("/metrics").text


def test_a_client_that_leaves_mid_body_is_not_a_server_error(micro_bundle: Path, real_index: Path) -> None:
    """The body stops short and the client disconnects: no answer can reach it, nothing is logged as an error,
    and /metrics counts 499 (nginx's "client closed request") under the route, never 500."""
    app = create_app(Settings(bundle=micro_bundle, index=real_index, max_wait_ms=1.0))

    async def cut_short(path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
        messages = iter([{"type": "http.request", "body": body[: len(body) // 2], "more_body": True}])
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return next(messages, {"type": "http.disconnect"})

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "scheme": "http",
            "query_string": b"",
            "headers": [(b"content-length", str(len(body)).encode()), *headers],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "app": app,
        }
        await app(scope, receive, send)
        return sent

    image = base64.b64encode(png_bytes()).decode()
    json_type = [(b"content-type", b"application/json")]
    with TestClient(app) as c:
        assert c.portal is not None
        for path, body in (
            ("/v1/search", json.dumps({"text": "a red circle", "k": 3}).encode()),
            ("/v1/embed", json.dumps({"images": [image]}).encode()),  # the fast path's own read
        ):
            sent = c.portal.call(cut_short, path, body, json_type)
            assert all(m.get("status") != 500 for m in sent), sent
        metrics = c.get("/metrics").text
        for route in ("/v1/search", "/v1/embed"):
            assert f'clipforge_requests_total{{method="POST",route="{route}",status="499"}} 1.0' in metrics, metrics
        assert 'status="500"' not in metrics
        assert c.post("/v1/search", json={"text": "a red circle", "k": 3}).status_code == 200  # still serving


def test_a_filter_with_too_many_values_is_a_422_and_the_server_keeps_serving(
    micro_bundle: Path, real_index: Path
) -> None:
    """Each filter value is a bound SQL parameter (four of them for a dotted non-ASCII key): 70,000 values
    went past SQLite's limit and answered 500 "too many SQL variables". They are capped, in all fields."""
    app = create_app(Settings(bundle=micro_bundle, index=real_index, max_wait_ms=1.0))
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/search", json={"text": "a", "filters": {"a.ü": list(range(70_000))}})
        assert_error(r, 422, "invalid_filter")
        assert "1024 values" in r.json()["error"]["message"]
        from clipforge.index.meta import MAX_FILTER_VALUES

        over = {"color": ["red"] * MAX_FILTER_VALUES, "shape": "circle"}  # over the cap only in all fields
        assert_error(c.post("/v1/search", json={"text": "a", "filters": over}), 422, "invalid_filter")
        at_cap = {"color": ["red"] + [f"v{i}" for i in range(MAX_FILTER_VALUES - 1)]}
        r = c.post("/v1/search", json={"text": "a red circle", "k": 8, "filters": at_cap})
        assert r.status_code == 200 and {h["caption"] for h in r.json()["results"]} == {"a red circle", "a red square"}
        r = c.post("/v1/search", json={"text": "a red circle", "k": 8})
        assert r.status_code == 200 and len(r.json()["results"]) == 8
        assert 'status="500"' not in c.get("/metrics").text


def test_info_and_errors_name_no_server_path(
    micro_bundle: Path, real_index: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """/v1/info told any reader the index directory, the bundle's and the folders it was built from (the whole
    manifest); now a list of fields a client needs. A corrupt index is a 503 whose message names no file."""
    import shutil

    from clipforge.index import Index

    index_dir = tmp_path / "idx"
    shutil.copytree(real_index, index_dir)
    app = create_app(Settings(bundle=micro_bundle, index=index_dir, api_key=WRITE_KEY, max_wait_ms=1.0))
    base = str(tmp_path_factory.getbasetemp())  # above every test directory: the index, bundle and images
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/v1/info")
        assert r.status_code == 200 and base not in r.text and str(micro_bundle) not in r.text
        index = r.json()["index"]
        assert index["count"] == 8 and index["dim"] == 32 and index["version"] == 1
        assert index["counts"]["items"] == 8 and index["live"]["images"] == 8
        assert index["images"]["factory"] == "Flat" and index["images"]["count"] == 8
        assert "path" not in index and "bundle" not in index and "provenance" not in index

        # another process publishes a version whose metadata table is then damaged
        writer = Index.open(index_dir)
        writer.remove([7])
        writer.close()
        with open(index_dir / "v0002" / "meta.sqlite", "ab") as f:
            f.write(b"junk")
        for r in (
            c.post("/v1/search", json={"text": "a red circle"}),
            c.post("/v1/search", json={"id": 1}),
            c.get("/v1/items/1"),
            c.delete("/v1/items/1", headers={"X-API-Key": WRITE_KEY}),
            c.get("/v1/info"),
        ):
            assert_error(r, 503, "index_unavailable")
            assert base not in r.text and "meta.sqlite" not in r.text
        ready = c.get("/readyz")  # said "ready" while every index route answered 503: no health check noticed
        assert ready.status_code == 503 and ready.json()["index"] is False


def test_an_index_rebuilt_with_another_bundle_is_not_served(
    micro_bundle: Path, siglip_bundle: Path, real_index: Path, tmp_path: Path
) -> None:
    """The index directory is rebuilt, in place, with another bundle while the server runs: its searches keep
    the version they were started with (the new one's vectors mean nothing to this model), and adds are a 503
    that leaves the new index as it was."""
    import shutil

    from clipforge.encoders.bundle import load_bundle
    from clipforge.index import Index

    index_dir = tmp_path / "idx"
    shutil.copytree(real_index, index_dir)
    app = create_app(Settings(bundle=micro_bundle, index=index_dir, api_key=WRITE_KEY, max_wait_ms=1.0))
    with TestClient(app, raise_server_exceptions=False) as c:
        query = {"text": "a red circle", "k": 3}
        before = c.post("/v1/search", json=query).json()
        fingerprint = c.get("/v1/info").json()["index"]["fingerprint"]

        other = load_bundle(siglip_bundle, device="cpu")
        folder = tmp_path / "images"
        folder.mkdir()
        for i, (data, caption, _) in enumerate(shape_items()):
            (folder / f"img{i}.png").write_bytes(data)
            (folder / f"img{i}.txt").write_text(caption)
        shutil.rmtree(index_dir)
        Index.build(other, str(folder), index_dir, progress=False).close()
        rebuilt = json.loads((index_dir / "manifest.json").read_text())
        assert rebuilt["fingerprint"] == other.fingerprint != fingerprint

        assert c.post("/v1/search", json=query).json() == before
        assert c.get("/v1/info").json()["index"]["fingerprint"] == fingerprint
        image = base64.b64encode(png_bytes()).decode()
        r = c.post("/v1/items", headers={"X-API-Key": WRITE_KEY}, json={"images": [image]})
        assert_error(r, 503, "index_unavailable")
        assert str(tmp_path) not in r.text
    assert json.loads((index_dir / "manifest.json").read_text()) == rebuilt  # not written over


class RemovedMeanwhile:
    """The real index, with a second writer (another `Index` on its directory) removing an item just before
    this one removes or searches by it: what a concurrent DELETE does between a route's lookup and its call."""

    def __init__(self, index: Any, other: Any) -> None:
        self.index, self.other = index, other

    def __getattr__(self, name: str) -> Any:
        return getattr(self.index, name)

    def remove(self, ids: list[int]) -> int:
        self.other.remove(ids)
        return self.index.remove(ids)

    def search_id(self, id: int, k: int = 10, **kw: Any) -> Any:
        self.other.remove([id])
        return self.index.search_id(id, k, **kw)


def test_an_item_removed_between_lookup_and_use_is_a_404(
    make_client: AppFactory, bundle: Any, real_index: Path, tmp_path: Path
) -> None:
    """Two DELETEs of one item: both found it, the second's remove then met an unknown id and answered 422."""
    import shutil

    from clipforge.index import Index

    index_dir = tmp_path / "idx"
    shutil.copytree(real_index, index_dir)
    other = Index.open(index_dir)
    racing = RemovedMeanwhile(Index.open(index_dir, bundle=bundle), other)
    try:
        _, c = make_client(index=racing, api_key=WRITE_KEY, raise_server_exceptions=False)
        assert_error(c.delete("/v1/items/3", headers={"X-API-Key": WRITE_KEY}), 404, "not_found")
        assert_error(c.post("/v1/search", json={"id": 4, "k": 3}), 404, "not_found")
        assert_error(c.get("/v1/items/3"), 404, "not_found")
        assert len(other) == 6 and len(racing.index) == 6  # each removed once
    finally:
        other.close()
