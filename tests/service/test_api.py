"""Every endpoint on its happy path, checked against the bundle computed directly (not just "it runs")."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import WRITE_KEY, AppFactory
from tests.service.fakes import COLORS, FakeIndex, encode_reference, png_bytes

RED = png_bytes(COLORS["red"])
BLUE_SQUARE = png_bytes(COLORS["blue"], shape="square", fmt="JPEG")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def expected_probs(
    bundle: Any, image: bytes, labels: list[str], templates: list[str], siglip: bool = False
) -> np.ndarray:
    img = encode_reference(bundle, image)  # [D]
    cls = bundle.encode_texts([t.replace("{}", lab) for lab in labels for t in templates]).numpy()
    cls = cls.reshape(len(labels), len(templates), -1).mean(1)
    cls /= np.linalg.norm(cls, axis=1, keepdims=True)
    logits = bundle.logit_scale() * cls @ img  # [L]
    if siglip:
        return 1 / (1 + np.exp(-(logits + bundle.meta["logit_bias"])))
    e = np.exp(logits - logits.max())
    return e / e.sum()


def test_health_ready_info_page_docs(client: TestClient, bundle: Any) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "model": True, "index": True}
    info = client.get("/v1/info").json()
    assert info["bundle"]["fingerprint"] == bundle.fingerprint and info["bundle"]["embed_dim"] == 32
    assert info["index"]["count"] == 8 and info["limits"]["max_k"] == 20 and info["writes_enabled"]
    assert info["label_sets"] == {"shapes": 3}
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="classify-form"' in page.text and "Content-Security-Policy" in page.headers
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for p in (
        "/v1/classify",
        "/v1/embed",
        "/v1/search",
        "/v1/items",
        "/v1/items/{item_id}",
        "/v1/items/{item_id}/image",
        "/v1/info",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert p in paths
    body = paths["/v1/classify"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}


def test_readyz_is_503_without_a_model(make_client: AppFactory) -> None:
    _, c = make_client(bundle=None)
    r = c.get("/readyz")
    assert r.status_code == 503 and r.json()["model"] is False
    r = c.post("/v1/embed", json={"texts": ["x"]})
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"


def test_classify_multipart_matches_the_model(client: TestClient, bundle: Any) -> None:
    labels = ["red circle", "blue square", "green thing"]
    templates = ["a photo of a {}.", "{}"]
    files = [("images", ("r.png", RED, "image/png")), ("images", ("b.jpg", BLUE_SQUARE, "image/jpeg"))]
    r = client.post("/v1/classify", files=files, data={"labels": labels, "templates": templates})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["activation"] == "softmax" and body["templates"] == templates and len(body["results"]) == 2
    for image, result in zip((RED, BLUE_SQUARE), body["results"], strict=True):
        want = expected_probs(bundle, image, labels, templates)
        got = {x["label"]: x["score"] for x in result["labels"]}
        np.testing.assert_allclose([got[lab] for lab in labels], want, rtol=1e-4, atol=1e-6)
        scores = [x["score"] for x in result["labels"]]
        assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-5
        sims = {x["label"]: x["similarity"] for x in result["labels"]}  # the logits / logit scale
        logits = np.log([got[lab] for lab in labels]) / bundle.logit_scale()
        np.testing.assert_allclose(np.diff([sims[lab] for lab in labels]), np.diff(logits), atol=1e-4)
        assert all(-1 <= v <= 1 for v in sims.values())


def test_classify_one_label_still_says_how_well_it_fits(client: TestClient, bundle: Any) -> None:
    """A softmax over one label is 1 whatever the image: the cosine is what tells a fit from a misfit."""
    for image in (RED, BLUE_SQUARE):
        r = client.post("/v1/classify", json={"images": [b64(image)], "labels": ["red circle"], "templates": ["{}"]})
        (only,) = r.json()["results"][0]["labels"]
        img = encode_reference(bundle, image)
        txt = bundle.encode_texts(["red circle"]).numpy()[0]
        assert only["score"] == pytest.approx(1.0)
        assert only["similarity"] == pytest.approx(float(img @ txt / np.linalg.norm(txt)), abs=1e-4)


def test_classify_json_label_set_top_k_and_cache(client: TestClient, bundle: Any) -> None:
    req = {"images": [b64(RED), "data:image/png;base64," + b64(RED)], "label_set": "shapes", "top_k": 2}
    first = client.post("/v1/classify", json=req).json()
    assert first["cached"] is False and [len(r["labels"]) for r in first["results"]] == [2, 2]
    assert first["results"][0] == first["results"][1]  # the data: URL is the same image
    want = expected_probs(bundle, RED, ["circle", "square", "triangle"], list(first["templates"]))
    assert first["results"][0]["labels"][0]["label"] == ["circle", "square", "triangle"][int(want.argmax())]
    second = client.post("/v1/classify", json=req).json()
    assert second["cached"] is True and second["results"] == first["results"]
    metrics = client.get("/metrics").text
    assert 'clipforge_label_cache_total{result="hit"} 1.0' in metrics
    assert 'clipforge_label_cache_total{result="miss"} 1.0' in metrics


def test_classify_siglip_uses_sigmoid(make_client: AppFactory, siglip_bundle: Any) -> None:
    from clipforge.encoders.bundle import load_bundle

    _, c = make_client(bundle=siglip_bundle)
    labels = ["red", "blue", "green"]
    r = c.post("/v1/classify", json={"images": [b64(RED)], "labels": labels, "templates": ["{}"]})
    body = r.json()
    assert r.status_code == 200 and body["activation"] == "sigmoid"
    got = {x["label"]: x["score"] for x in body["results"][0]["labels"]}
    want = expected_probs(load_bundle(siglip_bundle, device="cpu"), RED, labels, ["{}"], siglip=True)
    np.testing.assert_allclose([got[lab] for lab in labels], want, rtol=1e-4, atol=1e-7)
    assert sum(got.values()) < 0.5  # independent sigmoids with bias -10, not a distribution


def test_embed_texts_and_images(client: TestClient, bundle: Any) -> None:
    r = client.post("/v1/embed", json={"texts": ["a red circle", "a dog"], "images": [b64(RED)]})
    assert r.status_code == 200
    body = r.json()
    assert body["dim"] == 32 and body["fingerprint"] == bundle.fingerprint
    texts, images = np.array(body["text_embeddings"]), np.array(body["image_embeddings"])
    assert texts.shape == (2, 32) and images.shape == (1, 32)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(texts, bundle.encode_texts(["a red circle", "a dog"]).numpy(), atol=1e-5)
    np.testing.assert_allclose(images[0], encode_reference(bundle, RED), atol=1e-5)
    r = client.post("/v1/embed", files=[("images", ("b.jpg", BLUE_SQUARE, "image/jpeg"))])
    assert r.status_code == 200 and r.json()["text_embeddings"] == []
    np.testing.assert_allclose(r.json()["image_embeddings"][0], encode_reference(bundle, BLUE_SQUARE), atol=1e-5)


def test_search_by_text_image_vector_and_id(client: TestClient, bundle: Any, fake_index: FakeIndex) -> None:
    r = client.post("/v1/search", json={"text": "a red circle", "k": 3})
    assert r.status_code == 200
    hits = r.json()["results"]
    q = bundle.encode_texts(["a red circle"]).numpy()
    want = fake_index.search_vectors(q, 3)[0]
    assert [h["id"] for h in hits] == [h.id for h in want]
    np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in want], atol=1e-5)
    assert hits[0]["image_url"] == f"/v1/items/{hits[0]['id']}/image" and hits[0]["caption"].startswith("a ")
    assert hits[0]["metadata"]["split"] == "test"

    # an uploaded image equal to a stored one finds that one first, with score ~1
    stored = png_bytes(COLORS["yellow"], shape="square")
    r = client.post("/v1/search", files=[("image", ("q.png", stored, "image/png"))], data={"k": "2"})
    assert r.json()["query"] == "image" and r.json()["results"][0]["caption"] == "a yellow square"
    assert r.json()["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)

    r = client.post("/v1/search", json={"image": b64(stored), "k": 1, "target": "images"})
    assert r.json()["query"] == "image" and r.json()["results"][0]["caption"] == "a yellow square"

    vec = (encode_reference(bundle, stored) * 3).tolist()  # not normalised: the server normalises
    r = client.post("/v1/search", json={"vector": vec, "k": 1, "target": "images"})
    assert r.json()["results"][0]["caption"] == "a yellow square"

    r = client.post("/v1/search", json={"id": 0, "k": 2})
    assert r.json()["query"] == "id" and r.json()["results"][0]["id"] == 0


def test_search_options_reach_the_index(client: TestClient, fake_index: FakeIndex) -> None:
    req = {
        "text": "square",
        "k": 5,
        "target": "captions",
        "filters": {"shape": "square"},
        "threshold": -1.0,
        "offset": 1,
    }
    r = client.post("/v1/search", json=req)
    assert r.status_code == 200 and r.json()["target"] == "captions"
    assert all(h["metadata"]["shape"] == "square" for h in r.json()["results"]) and len(r.json()["results"]) == 3
    call = fake_index.calls[-1][1]
    assert call == {
        "k": 5,
        "target": "captions",
        "filters": {"shape": "square"},
        "threshold": -1.0,
        "offset": 1,
        "shape": (1, 32),
    }
    r = client.post("/v1/search", json={"text": "square", "threshold": 0.999})
    assert r.status_code == 200 and r.json()["results"] == []


def test_search_numbers_are_strict_and_multipart_text_fields_still_parse(
    client: TestClient, fake_index: FakeIndex
) -> None:
    """k, offset and threshold take numbers only (JSON's true was k=1); a multipart form's fields are text,
    and the text of a number is still that number."""
    for bad in ({"k": True}, {"offset": True}, {"threshold": True}, {"k": "3"}, {"k": 3.0}):
        r = client.post("/v1/search", json={"text": "square", **bad})
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", (bad, r.text)
    r = client.post("/v1/search", json={"text": "square", "k": 3, "offset": 1, "threshold": -1})
    assert r.status_code == 200 and fake_index.calls[-1][1]["threshold"] == -1.0

    image = [("image", ("q.png", BLUE_SQUARE, "image/jpeg"))]
    r = client.post("/v1/search", files=image, data={"k": "3", "offset": "1", "threshold": "-0.5"})
    assert r.status_code == 200, r.text
    call = fake_index.calls[-1][1]
    assert (call["k"], call["offset"], call["threshold"]) == (3, 1, -0.5)
    for bad in ({"k": "true"}, {"k": "ten"}, {"threshold": "true"}, {"offset": "1.5"}):
        r = client.post("/v1/search", files=image, data=bad)
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", (bad, r.text)


def test_items_get_image_add_delete(client: TestClient, fake_index: FakeIndex) -> None:
    item = client.get("/v1/items/3").json()
    assert item["caption"] == "a green square" and item["width"] == 48 and item["metadata"]["color"] == "green"
    assert "source" not in item and "path" not in item  # server paths are not exposed
    img = client.get(item["image_url"])
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert img.content == fake_index.read_image_bytes(3)[0] and img.headers["x-content-type-options"] == "nosniff"

    key = {"X-API-Key": WRITE_KEY}
    r = client.post(
        "/v1/items", headers=key, json={"images": [b64(RED)], "captions": ["new red"], "metadata": [{"a": 1}]}
    )
    assert r.status_code == 201, r.text
    (new_id,) = r.json()["ids"]
    assert len(fake_index) == 9 and client.get(f"/v1/items/{new_id}").json()["caption"] == "new red"
    r = client.post(
        "/v1/items",
        headers=key,
        files=[("images", ("x.jpg", BLUE_SQUARE, "image/jpeg"))],
        data={"captions": ["uploaded"]},
    )
    assert r.status_code == 201 and len(fake_index) == 10

    r = client.delete(f"/v1/items/{new_id}", headers=key)
    assert r.status_code == 200 and r.json() == {"removed": 1} and len(fake_index) == 9
    assert client.get(f"/v1/items/{new_id}").status_code == 404
    assert client.delete(f"/v1/items/{new_id}", headers=key).status_code == 404


def test_metrics_count_requests_batches_and_queue(client: TestClient) -> None:
    client.post("/v1/embed", json={"texts": ["a", "b", "c"]})
    client.get("/v1/items/999999")
    text = client.get("/metrics").text
    assert 'clipforge_requests_total{method="POST",route="/v1/embed",status="200"} 1.0' in text
    assert 'clipforge_requests_total{method="GET",route="/v1/items/{item_id}",status="404"} 1.0' in text
    assert 'clipforge_batch_size_count{kind="text"}' in text and 'clipforge_queue_depth{kind="image"} 0.0' in text
    assert 'clipforge_request_duration_seconds_bucket{le="+Inf",route="/v1/embed"} 1.0' in text
