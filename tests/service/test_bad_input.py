"""Every kind of bad input gets a 4xx with {"error": {"code", "message"}}, never a 500; the server keeps serving.

The TestClient re-raises any exception that reaches the catch-all handler, so a 500 fails these tests loudly.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.service.conftest import WRITE_KEY, AppFactory
from tests.service.fakes import png_bytes

GOOD = png_bytes()
B64 = base64.b64encode(GOOD).decode()
KEY = {"X-API-Key": WRITE_KEY}


def png_header_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG signature + IHDR claiming a huge image, and a tiny IDAT: refused before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def big_pixels_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (1000, 1000), 7).save(buf, format="PNG")  # 1e6 pixels > max_image_pixels=200_000, ~1 KB
    return buf.getvalue()


def upload(data: bytes, ctype: str = "image/png", field: str = "images") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, ("x.png", data, ctype))]


def assert_error(r: Any, status: int | tuple[int, ...], code: str | None = None) -> None:
    assert r.status_code in (status if isinstance(status, tuple) else (status,)), (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body


LABELS = {"labels": ["cat", "dog"]}
IMAGE_CASES = {
    "corrupt": (bytes(range(256)) * 8, 400, "invalid_image"),
    "truncated": (GOOD[: len(GOOD) // 2], 400, "invalid_image"),
    "truncated_jpeg": (png_bytes(fmt="JPEG")[:300], 400, "invalid_image"),
    "empty": (b"", 400, "empty_image"),
    "text_as_png": (b"hello, I am not an image", 400, "invalid_image"),
    "html_as_png": (b"<html><script>alert(1)</script></html>", 400, "invalid_image"),
    "header_bomb": (png_header_bomb(), 413, "image_too_large"),
    "too_many_pixels": (big_pixels_png(), 413, "image_too_large"),
    "over_upload_limit": (b"\x89PNG" + b"\x00" * 70_000, 413, "payload_too_large"),
}


@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
def test_bad_image_uploads(shared_client: TestClient, case: str) -> None:
    data, status, code = IMAGE_CASES[case]
    assert_error(shared_client.post("/v1/classify", files=upload(data), data=LABELS), status, code)
    assert_error(shared_client.post("/v1/embed", files=upload(data)), status, code)
    assert_error(shared_client.post("/v1/search", files=upload(data, field="image")), status, code)
    b64 = base64.b64encode(data).decode()
    assert_error(shared_client.post("/v1/classify", json={"images": [b64], **LABELS}), status, code)
    assert_error(shared_client.post("/v1/items", headers=KEY, json={"images": [b64]}), status, code)


CLASSIFY_CASES = {
    "no_labels": ({"images": [B64]}, 422, "invalid_labels"),
    "empty_labels": ({"images": [B64], "labels": []}, 422, "invalid_labels"),
    "empty_label": ({"images": [B64], "labels": ["cat", ""]}, 422, "empty_text"),
    "blank_label": ({"images": [B64], "labels": ["cat", "   "]}, 422, "empty_text"),
    "duplicate_labels": ({"images": [B64], "labels": ["cat", "dog", "cat"]}, 422, "duplicate_labels"),
    "duplicate_after_strip": ({"images": [B64], "labels": ["cat", " cat "]}, 422, "duplicate_labels"),
    "too_many_labels": ({"images": [B64], "labels": [f"l{i}" for i in range(9)]}, 422, "too_many_labels"),
    "long_label": ({"images": [B64], "labels": ["x" * 51]}, 422, "text_too_long"),
    "labels_and_set": ({"images": [B64], "labels": ["a"], "label_set": "shapes"}, 422, "invalid_labels"),
    "unknown_set": ({"images": [B64], "label_set": "nope"}, 404, "unknown_label_set"),
    "template_no_slot": ({"images": [B64], "labels": ["a"], "templates": ["a photo"]}, 422, "invalid_templates"),
    "template_format_braces": ({"images": [B64], "labels": ["a"], "templates": ["{0} {x}"]}, 422, "invalid_templates"),
    "no_templates": ({"images": [B64], "labels": ["a"], "templates": []}, 422, "invalid_templates"),
    "no_images": ({"labels": ["a"]}, 422, "no_images"),
    "too_many_images": ({"images": [B64] * 5, "labels": ["a"]}, 422, "too_many_images"),
    "bad_base64": ({"images": ["not base64!!"], "labels": ["a"]}, 400, "invalid_base64"),
    "url_not_fetched": ({"images": ["http://127.0.0.1:1/cat.png"], "labels": ["a"]}, 400, "invalid_base64"),
    "labels_not_list": ({"images": [B64], "labels": "cat"}, 422, "validation_error"),
    "unknown_field": ({"images": [B64], "labels": ["a"], "url": "http://x"}, 422, "validation_error"),
    "top_k_zero": ({"images": [B64], "labels": ["a"], "top_k": 0}, 422, "validation_error"),
}


@pytest.mark.parametrize("case", sorted(CLASSIFY_CASES))
def test_bad_classify_requests(shared_client: TestClient, case: str) -> None:
    body, status, code = CLASSIFY_CASES[case]
    assert_error(shared_client.post("/v1/classify", json=body), status, code)


SEARCH_CASES = {
    "k_zero": ({"text": "a", "k": 0}, 422, "validation_error"),
    "k_over_max": ({"text": "a", "k": 21}, 422, "k_out_of_range"),
    "k_huge": ({"text": "a", "k": 10**9}, 422, "validation_error"),
    "k_string": ({"text": "a", "k": "ten"}, 422, "validation_error"),
    "offset_negative": ({"text": "a", "offset": -1}, 422, "validation_error"),
    "offset_over_max": ({"text": "a", "offset": 1001}, 422, "offset_out_of_range"),
    "no_query": ({"k": 3}, 422, "invalid_query"),
    "two_queries": ({"text": "a", "id": 1}, 422, "invalid_query"),
    "long_text": ({"text": "x" * 51}, 422, "text_too_long"),
    "empty_text": ({"text": ""}, 422, "empty_text"),
    "unknown_id": ({"id": 123456}, 404, "not_found"),
    "negative_id": ({"id": -1}, 422, "validation_error"),
    "vector_wrong_dim": ({"vector": [0.1] * 31}, 422, "invalid_vector"),
    "vector_zero": ({"vector": [0.0] * 32}, 422, "invalid_vector"),
    "vector_strings": ({"vector": ["a"] * 32}, 422, "validation_error"),
    "bad_target": ({"text": "a", "target": "videos"}, 422, "validation_error"),
    "threshold_out_of_range": ({"text": "a", "threshold": 2}, 422, "validation_error"),
    "filter_nested": ({"text": "a", "filters": {"a": {"b": 1}}}, 422, "validation_error"),
    "filter_bad_key": ({"text": "a", "filters": {'a"; drop table items; --': 1}}, 422, "invalid_filter"),
    # where an item's file lives on the server is never sent out, so no filter may probe it either
    "filter_on_path": ({"text": "a", "filters": {"path": "images/ab/x.png"}}, 422, "invalid_filter"),
    "filter_on_source": ({"text": "a", "filters": {"source": ["/data/shard-000000.tar"]}}, 422, "invalid_filter"),
    "filter_on_member": ({"text": "a", "filters": {"color": "red", "member": "0001.jpg"}}, 422, "invalid_filter"),
    # JSON's true is not a number: it was taken as k=1, offset 1 or threshold 1.0
    "k_true": ({"text": "a", "k": True}, 422, "validation_error"),
    "offset_true": ({"text": "a", "offset": True}, 422, "validation_error"),
    "threshold_true": ({"text": "a", "threshold": True}, 422, "validation_error"),
}


@pytest.mark.parametrize("case", sorted(SEARCH_CASES))
def test_bad_search_requests(shared_client: TestClient, case: str) -> None:
    body, status, code = SEARCH_CASES[case]
    assert_error(shared_client.post("/v1/search", json=body), status, code)


def test_bad_embed_requests(shared_client: TestClient) -> None:
    c = shared_client
    assert_error(c.post("/v1/embed", json={}), 422, "nothing_to_embed")
    assert_error(c.post("/v1/embed", json={"texts": []}), 422, "nothing_to_embed")
    assert_error(c.post("/v1/embed", json={"texts": ["ok", "y" * 51]}), 422, "text_too_long")
    assert_error(c.post("/v1/embed", json={"texts": ["t"] * 65}), 422, "too_many_texts")
    assert_error(c.post("/v1/embed", json={"texts": [1, 2]}), 422, "validation_error")


def test_transport_level_mistakes(shared_client: TestClient) -> None:
    c = shared_client
    assert_error(
        c.post("/v1/classify", content=b'{"labels": ["a"', headers={"content-type": "application/json"}),
        400,
        "invalid_json",
    )
    assert_error(c.post("/v1/embed", content=b"\xff\xfe", headers={"content-type": "application/json"}), 400)
    # NaN and Infinity are not JSON (RFC 8259), though Python's json reads them
    assert_error(
        c.post("/v1/embed", content=b'{"vector": [NaN]}', headers={"content-type": "application/json"}),
        400,
        "invalid_json",
    )
    nan = b'{"vector": [' + b",".join([b"NaN"] * 32) + b"]}"
    assert_error(c.post("/v1/search", content=nan, headers={"content-type": "application/json"}), 400, "invalid_json")
    big = b'{"vector": [' + b",".join([b"1e400"] * 32) + b"]}"  # JSON, but infinite as a float
    assert_error(c.post("/v1/search", content=big, headers={"content-type": "application/json"}), 422)
    assert_error(c.post("/v1/embed", json=["a", "b"]), 422, "validation_error")
    deep = b'{"texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert_error(c.post("/v1/embed", content=deep, headers={"content-type": "application/json"}), (400, 422))
    assert_error(c.post("/v1/embed", content=b"texts=a", headers={"content-type": "text/plain"}), 415)
    assert_error(
        c.post("/v1/embed", content=b"texts=a", headers={"content-type": "application/x-www-form-urlencoded"}), 415
    )
    assert_error(c.post("/v1/embed", content=b""), 415, "unsupported_media_type")
    assert_error(c.post("/v1/classify", files=upload(GOOD, "text/plain"), data=LABELS), 415, "unsupported_media_type")
    bad_multipart = {"content-type": "multipart/form-data; boundary=xyz"}
    # python-multipart reads some broken bodies as an empty form: then the missing fields are the complaint
    assert_error(c.post("/v1/classify", content=b"--xyz\r\nnonsense", headers=bad_multipart), (400, 422))
    assert_error(
        c.post("/v1/classify", content=b"garbage", headers={"content-type": "multipart/form-data"}), (400, 422)
    )
    assert_error(c.post("/v1/classify", files=upload(GOOD), data={"labels": ["a"], "top_k": ["1", "2"]}), 422)
    assert_error(c.post("/v1/classify", files=upload(GOOD), data={"labels": ["a"], "bogus": "1"}), 422)
    assert_error(
        c.post("/v1/search", files=upload(GOOD, field="image"), data={"filters": "{oops"}), 400, "invalid_json"
    )
    assert_error(c.post("/v1/search", files=upload(GOOD, field="image") * 2), 422, "invalid_query")
    assert_error(c.post("/v1/search", files=upload(GOOD, field="text")), 422, "validation_error")
    assert_error(c.post("/v1/classify", files=upload(GOOD) * 5, data=LABELS), 422, "too_many_images")


def test_unknown_ids_routes_and_methods(shared_client: TestClient) -> None:
    c = shared_client
    assert_error(c.get("/v1/items/424242"), 404, "not_found")
    assert_error(c.get("/v1/items/424242/image"), 404, "not_found")
    assert_error(c.get("/v1/items/abc"), 422, "validation_error")
    assert_error(c.get("/v1/items/-3"), 422, "validation_error")
    assert_error(c.get(f"/v1/items/{2**70}"), 422, "validation_error")
    assert_error(c.delete("/v1/items/424242", headers=KEY), 404, "not_found")
    assert_error(c.get("/v1/nope"), 404, "not_found")
    assert_error(c.get("/static/../settings.py"), 404)
    assert_error(c.get("/v1/classify"), 405, "method_not_allowed")
    assert_error(c.put("/v1/items/1"), 405, "method_not_allowed")


def test_bad_item_writes(shared_client: TestClient) -> None:
    c = shared_client
    assert_error(c.post("/v1/items", headers=KEY, json={}), 422, "no_images")
    assert_error(c.post("/v1/items", headers=KEY, json={"images": [B64, B64], "captions": ["one"]}), 422)
    assert_error(c.post("/v1/items", headers=KEY, json={"images": [B64], "captions": ["z" * 51]}), 422, "text_too_long")
    assert_error(c.post("/v1/items", headers=KEY, json={"images": [B64], "metadata": ["not an object"]}), 422)


def test_request_body_limit(make_client: AppFactory) -> None:
    _, c = make_client(max_request_bytes=4096)
    assert_error(c.post("/v1/embed", json={"texts": ["a" * 5000]}), 413, "payload_too_large")

    def chunked():  # no content-length: the limit is enforced while streaming
        yield b'{"texts": ["'
        for _ in range(10):
            yield b"a" * 1000
        yield b'"]}'

    assert_error(c.post("/v1/embed", content=chunked(), headers={"content-type": "application/json"}), 413)


def test_server_keeps_serving_after_bad_input(shared_client: TestClient) -> None:
    c = shared_client
    for data, _, _ in IMAGE_CASES.values():
        c.post("/v1/classify", files=upload(data), data=LABELS)
    assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
    r = c.post("/v1/classify", files=upload(GOOD), data=LABELS)
    assert r.status_code == 200 and len(r.json()["results"][0]["labels"]) == 2
    assert 'status="500"' not in c.get("/metrics").text


def test_catch_all_handler_answers_json_500(make_client: AppFactory) -> None:
    from clipforge.service.deps import get_engine

    class Broken:
        async def encode_texts(self, texts: list[str]) -> Any:
            raise RuntimeError("secret internal detail")

    app, c = make_client(raise_server_exceptions=False)
    app.dependency_overrides[get_engine] = lambda: Broken()
    r = c.post("/v1/embed", json={"texts": ["a"]})
    assert_error(r, 500, "internal_error")
    assert "secret" not in r.text
    assert c.get("/healthz").status_code == 200


def test_search_without_an_index(make_client: AppFactory) -> None:
    _, c = make_client()
    assert_error(c.post("/v1/search", json={"text": "a"}), 404, "no_index")
    assert_error(c.get("/v1/items/1"), 404, "no_index")
    assert c.get("/readyz").status_code == 200  # no index was configured, so none is needed


def test_one_bad_image_among_good_ones_names_its_index(shared_client: TestClient) -> None:
    corrupt = base64.b64encode(bytes(range(256)) * 8).decode()
    r = shared_client.post("/v1/embed", json={"images": [B64, corrupt, B64]})
    assert_error(r, 400, "invalid_image")
    assert r.json()["error"]["message"].startswith("image 1:")
    assert shared_client.post("/v1/embed", json={"images": [B64, B64]}).status_code == 200  # still serving


@pytest.mark.parametrize("raw", ["-0", "1_0", "+1", "1.0", "0x1", " 1", "١"])
def test_an_item_id_in_a_path_is_plain_digits(shared_client: TestClient, raw: str) -> None:
    """Otherwise "/v1/items/1_0" would be item 10 and "-0" item 0: several URLs for one item."""
    assert_error(shared_client.get(f"/v1/items/{raw}"), 422)
    assert_error(shared_client.delete(f"/v1/items/{raw}", headers={"X-API-Key": WRITE_KEY}), 422)


def test_json_true_is_not_an_id_nor_a_top_k(client: Any) -> None:
    """`{"id": true}` searched for items like item 1; `top_k: true` returned one label."""
    assert_error(client.post("/v1/search", json={"id": True}), 422)
    r = client.post("/v1/classify", json={"images": [], "labels": ["a", "b"], "top_k": True})
    assert r.status_code == 422
