"""POST /v1/items encodes through the service's engine: each image decoded once, in the batcher (so in the
batch metrics), and the index only stores the vectors it is given."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from clipforge.service.app import create_app
from clipforge.service.settings import Settings
from tests.service.conftest import WRITE_KEY
from tests.service.fakes import encode_reference, png_bytes, shape_items


@pytest.fixture(scope="module")
def small_index(bundle: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from clipforge.index import Index

    folder = tmp_path_factory.mktemp("items-images")
    for i, (data, caption, meta) in enumerate(shape_items()):
        (folder / f"img{i}.png").write_bytes(data)
        (folder / f"img{i}.txt").write_text(caption)
        (folder / f"img{i}.json").write_text(json.dumps(meta))
    out = tmp_path_factory.mktemp("items-index") / "idx"
    Index.build(bundle, str(folder), out, progress=False).close()
    return out


def batch_totals(text: str, kind: str) -> tuple[float, float]:
    """(batches, items) the encoder ran for `kind`, from the Prometheus text."""
    values = {
        s.name: s.value
        for f in text_string_to_metric_families(text)
        if f.name == "clipforge_batch_size"
        for s in f.samples
        if s.labels.get("kind") == kind
    }
    return values.get("clipforge_batch_size_count", 0.0), values.get("clipforge_batch_size_sum", 0.0)


def test_add_decodes_each_image_once_in_the_batcher(
    micro_bundle: Path, bundle: Any, small_index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import clipforge.encoders.bundle as bundle_module
    import clipforge.encoders.images as images_module
    import clipforge.encoders.pixels as pixels_module

    index_dir = tmp_path / "idx"
    shutil.copytree(small_index, index_dir)
    decoded: list[str] = []
    real = images_module.decode_image

    def counting(source: Any, **kw: Any) -> Any:
        if isinstance(source, bytes | bytearray):
            decoded.append(hashlib.sha256(source).hexdigest())
        return real(source, **kw)

    monkeypatch.setattr(images_module, "decode_image", counting)  # load_image
    monkeypatch.setattr(bundle_module, "decode_image", counting)  # Bundle.decode_image
    monkeypatch.setattr(pixels_module, "decode_image", counting)  # ImagePrep: the service's and the index's path
    app = create_app(
        Settings(bundle=micro_bundle, index=index_dir, api_key=WRITE_KEY, max_wait_ms=1.0, decode_processes=0)
    )
    blobs = [png_bytes((10, 200, 200), shape="square"), png_bytes((200, 120, 10), size=(40, 30))]
    with TestClient(app) as c:
        before = batch_totals(c.get("/metrics").text, "image")
        texts_before = batch_totals(c.get("/metrics").text, "text")
        body = {"images": [base64.b64encode(b).decode() for b in blobs], "captions": ["  teal \n square ", "orange"]}
        r = c.post("/v1/items", headers={"X-API-Key": WRITE_KEY}, json=body)
        assert r.status_code == 201, r.text
        ids = r.json()["ids"]
        after = batch_totals(c.get("/metrics").text, "image")
        texts_after = batch_totals(c.get("/metrics").text, "text")
        assert sorted(decoded) == sorted(hashlib.sha256(b).hexdigest() for b in blobs)  # once each, no more
        assert after[0] > before[0] and after[1] - before[1] == 2  # both images went through the batcher
        assert texts_after[1] - texts_before[1] == 2  # and the captions
        first = c.get(f"/v1/items/{ids[0]}").json()
        assert first["caption"] == "teal square" and (first["width"], first["height"]) == (48, 48)
        second = c.get(f"/v1/items/{ids[1]}").json()
        assert second["caption"] == "orange" and (second["width"], second["height"]) == (40, 30)
        # the stored vector is the bundle's encoding of the image: a search with it finds the new item first
        r = c.post("/v1/search", json={"id": ids[0], "k": 1})
        assert r.status_code == 200
        hits = c.post("/v1/search", files=[("image", ("q.png", blobs[1], "image/png"))], data={"k": "1"})
        assert hits.json()["results"][0]["id"] == ids[1]

    from clipforge.index import Index

    stored = Index.open(index_dir).search_vectors(encode_reference(bundle, blobs[0])[None], k=1)[0][0]
    assert stored.id == ids[0] and stored.score == pytest.approx(1.0, abs=1e-4)


def test_a_bad_image_is_refused_before_the_index_is_touched(micro_bundle: Path, small_index: Path, tmp_path: Path):
    import shutil

    index_dir = tmp_path / "idx"
    shutil.copytree(small_index, index_dir)
    app = create_app(Settings(bundle=micro_bundle, index=index_dir, api_key=WRITE_KEY, max_wait_ms=1.0))
    body = {"images": [base64.b64encode(png_bytes()).decode(), base64.b64encode(b"not an image").decode()]}
    with TestClient(app) as c:
        r = c.post("/v1/items", headers={"X-API-Key": WRITE_KEY}, json=body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_image"
        assert "image 1" in r.json()["error"]["message"]
        assert c.get("/v1/info").json()["index"]["count"] == 8
    assert json.loads((index_dir / "manifest.json").read_text())["version"] == 1
    assert not (index_dir / "images").exists()  # no image bytes stored either
