"""Fusion heads over HTTP: real heads (clipforge.fusion, saved with their weights) on the micro bundle, served
by the app's lifespan; predictions equal the offline path (bundle encodes + head.predict)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from clipforge.fusion import build_fusion, load_head, save_head
from tests.service.conftest import DEFAULTS, client_factory
from tests.service.fakes import COLORS, FakeIndex, encode_reference, png_bytes, shape_items

BINARY, MULTICLASS = "red-circle", "shape"


def make_head(
    out: Path, kind: str, task: str, labels: list[str], fingerprint: str, dim: int, seed: int, name: str | None = None
) -> Path:
    torch.manual_seed(seed)
    module = build_fusion(kind, dim=dim, out=1 if task == "binary" else len(labels), width=8, hidden=16)
    with torch.no_grad():  # larger weights than the init's, so that probabilities differ visibly between pairs
        for p in module.parameters():
            p.mul_(4.0)
    return save_head(
        out,
        module,
        task=task,
        labels=labels,
        bundle_fingerprint=fingerprint,
        metrics={"accuracy": 0.5, "n_eval": 10},
        name=name,
    )


@pytest.fixture(scope="module")
def heads(bundle: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("heads")
    fp, dim = bundle.fingerprint, bundle.embed_dim
    return {
        BINARY: make_head(root / BINARY, "concat", "binary", ["no", "yes"], fp, dim, seed=1),
        MULTICLASS: make_head(
            root / MULTICLASS, "multiplicative", "multiclass", ["circle", "square", "none"], fp, dim, seed=2
        ),
        "other-bundle": make_head(root / "other", "concat", "binary", ["no", "yes"], "0" * 64, dim, seed=3),
        "same-name": make_head(root / "dup", "concat", "binary", ["no", "yes"], fp, dim, seed=4, name=BINARY),
    }


@pytest.fixture(scope="module")
def hclient(micro_bundle: Path, bundle: Any, heads: dict[str, Path]) -> Iterator[TestClient]:
    """The default test server (fake index, small limits) serving the binary and the multiclass head."""
    with client_factory(micro_bundle) as make:
        yield make(
            index=FakeIndex(bundle, shape_items()), heads=[heads[BINARY], heads[MULTICLASS]], max_pairs=4, **DEFAULTS
        )[1]


IMAGES = [png_bytes(COLORS["red"]), png_bytes(COLORS["blue"], shape="square"), png_bytes(COLORS["green"])]
TEXTS = ["is there a red circle?", "is there a red circle?", "a green thing"]


def offline(bundle: Any, head_dir: Path, image_features: np.ndarray, texts: list[str]) -> np.ndarray:
    """What `clipforge.fusion` computes in-process, without the service."""
    with torch.inference_mode():
        text_features = bundle.encode_texts(texts).numpy()
    return load_head(head_dir, fingerprint=bundle.fingerprint).predict(image_features, text_features)


def probs(body: dict[str, Any]) -> np.ndarray:
    return np.array([[r["probabilities"][label] for label in body["labels"]] for r in body["results"]])


def test_list_and_describe(hclient: TestClient, bundle: Any) -> None:
    listed = hclient.get("/v1/heads").json()["heads"]
    assert [h["name"] for h in listed] == [BINARY, MULTICLASS]
    one = hclient.get(f"/v1/heads/{MULTICLASS}").json()
    assert one == listed[1]
    assert one["task"] == "multiclass" and one["labels"] == ["circle", "square", "none"]
    assert one["kind"] == "multiplicative" and one["dim"] == bundle.embed_dim
    assert one["bundle_fingerprint"] == bundle.fingerprint and one["metrics"] == {"accuracy": 0.5, "n_eval": 10}
    r = hclient.get("/v1/heads/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_head"


def test_predict_multipart_equals_offline(hclient: TestClient, bundle: Any, heads: dict[str, Path]) -> None:
    files = [("images", (f"{i}.png", b, "image/png")) for i, b in enumerate(IMAGES)]
    r = hclient.post(f"/v1/heads/{BINARY}/predict", files=files, data={"texts": TEXTS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["head"], body["task"], body["labels"]) == (BINARY, "binary", ["no", "yes"])
    got = probs(body)
    want = offline(bundle, heads[BINARY], np.concatenate([encode_reference(bundle, b)[None] for b in IMAGES]), TEXTS)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.ptp(got[:, 1]) > 1e-3  # the pairs get different answers: the test could tell them apart
    for row, result in zip(got, body["results"], strict=True):
        assert result["p"] == pytest.approx(row[1], abs=1e-9)  # binary: p is the positive label's
        assert result["top"] == ["no", "yes"][int(row.argmax())]


def test_predict_json_and_ids_equal_offline(hclient: TestClient, bundle: Any, heads: dict[str, Path]) -> None:
    images = [base64.b64encode(b).decode() for b in IMAGES]
    r = hclient.post(f"/v1/heads/{MULTICLASS}/predict", json={"images": images, "texts": TEXTS})
    assert r.status_code == 200, r.text
    body = r.json()
    image_features = np.concatenate([encode_reference(bundle, b)[None] for b in IMAGES])
    np.testing.assert_allclose(probs(body), offline(bundle, heads[MULTICLASS], image_features, TEXTS), atol=1e-5)
    assert all("p" not in res for res in body["results"])  # only binary heads answer `p`
    assert probs(body).sum(axis=1) == pytest.approx([1, 1, 1], abs=1e-5)

    ids = [0, 3, 6]  # the fake index's red circle, green square, yellow circle: their stored image vectors
    texts = ["a circle", "a square", "a circle"]
    r = hclient.post(f"/v1/heads/{BINARY}/predict", json={"ids": ids, "texts": texts})
    assert r.status_code == 200, r.text
    stored = np.concatenate([encode_reference(bundle, shape_items()[i][0])[None] for i in ids])
    np.testing.assert_allclose(probs(r.json()), offline(bundle, heads[BINARY], stored, texts), atol=1e-5)
    # ids in a multipart body: a JSON-encoded field, as for every other route's lists
    r = hclient.post(f"/v1/heads/{BINARY}/predict", files={"ids": (None, "[0, 3, 6]")}, data={"texts": texts})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(probs(r.json()), offline(bundle, heads[BINARY], stored, texts), atol=1e-5)


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    line = next((ln for ln in text.splitlines() if ln.startswith(f"{name}{{{want}}}")), None)
    return float(line.split()[-1]) if line else 0.0


def test_metrics_batches_and_text_cache(hclient: TestClient) -> None:
    before = hclient.get("/metrics").text
    text = "a question asked twice, never before"
    for _ in range(2):
        r = hclient.post(f"/v1/heads/{MULTICLASS}/predict", json={"ids": [1, 2], "texts": [text, text]})
        assert r.status_code == 200
    files = [("images", ("a.png", IMAGES[0], "image/png"))]
    assert hclient.post(f"/v1/heads/{MULTICLASS}/predict", files=files, data={"texts": [text]}).status_code == 200
    after = hclient.get("/metrics").text
    watched = [
        ("clipforge_head_predictions_total", "head", MULTICLASS),
        ("clipforge_head_predict_duration_seconds_count", "head", MULTICLASS),
        ("clipforge_label_cache_total", "result", "miss"),
        ("clipforge_label_cache_total", "result", "hit"),
        ("clipforge_batch_size_count", "kind", "text"),
        ("clipforge_batch_size_count", "kind", "image"),
    ]
    diff = [metric(after, name, **{k: v}) - metric(before, name, **{k: v}) for name, k, v in watched]
    # 5 pairs in 3 requests; the text missed the cache once, then hit twice (so it was encoded in 1 batch);
    # the uploaded image went through the batcher (the ids' stored vectors did not)
    assert diff == [5, 3, 1, 2, 1, 1]


JPEG_TEXT = ("images", ("x.png", b"definitely not an image", "image/png"))


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "code"),
    [
        ("/v1/heads/nope/predict", {"json": {"ids": [0], "texts": ["x"]}}, 404, "unknown_head"),
        (f"/v1/heads/{BINARY}/predict", {"json": {"ids": [0]}}, 422, "no_texts"),
        (f"/v1/heads/{BINARY}/predict", {"json": {"ids": [0], "texts": []}}, 422, "no_texts"),
        (f"/v1/heads/{BINARY}/predict", {"json": {"texts": ["x"]}}, 422, "no_images"),
        (f"/v1/heads/{BINARY}/predict", {"json": {"ids": [], "texts": ["x"]}}, 422, "no_images"),
        (f"/v1/heads/{BINARY}/predict", {"json": {"ids": [0, 1], "texts": ["x"]}}, 422, "count_mismatch"),
        (f"/v1/heads/{BINARY}/predict", {"json": {"ids": [0], "texts": ["x", "y"]}}, 422, "count_mismatch"),
        (f"/v1/heads/{BINARY}/predict", {"json": {"ids": [0] * 5, "texts": ["x"] * 5}}, 422, "too_many_pairs"),
        (f"/v1/heads/{BINARY}/predict", {"json": {"ids": [0], "texts": [""]}}, 422, "empty_text"),
        (f"/v1/heads/{BINARY}/predict", {"json": {"ids": [0], "texts": ["x" * 51]}}, 422, "text_too_long"),
        (f"/v1/heads/{BINARY}/predict", {"json": {"ids": [99], "texts": ["x"]}}, 404, "not_found"),
        (f"/v1/heads/{BINARY}/predict", {"json": {"ids": [-1], "texts": ["x"]}}, 422, "validation_error"),
        (f"/v1/heads/{BINARY}/predict", {"json": {"ids": [True], "texts": ["x"]}}, 422, "validation_error"),
        (f"/v1/heads/{BINARY}/predict", {"json": {"ids": [1.0], "texts": ["x"]}}, 422, "validation_error"),
        (f"/v1/heads/{BINARY}/predict", {"json": {"ids": ["0"], "texts": "x"}}, 422, "validation_error"),
        (f"/v1/heads/{BINARY}/predict", {"json": {"ids": [0], "texts": ["x"], "k": 3}}, 422, "validation_error"),
        (f"/v1/heads/{BINARY}/predict", {"json": [{"ids": [0]}]}, 422, "validation_error"),
        (
            f"/v1/heads/{BINARY}/predict",
            {"content": b"{nope", "headers": {"content-type": "application/json"}},
            400,
            "invalid_json",
        ),
        (
            f"/v1/heads/{BINARY}/predict",
            {"content": b"ids=0", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        (f"/v1/heads/{BINARY}/predict", {"json": {"images": ["!!"], "texts": ["x"]}}, 400, "invalid_base64"),
        (f"/v1/heads/{BINARY}/predict", {"files": [JPEG_TEXT], "data": {"texts": ["x"]}}, 400, "invalid_image"),
        (
            f"/v1/heads/{BINARY}/predict",
            {"files": [("images", ("a.txt", b"hi", "text/plain"))], "data": {"texts": ["x"]}},
            415,
            "unsupported_media_type",
        ),
        (
            f"/v1/heads/{BINARY}/predict",
            {"json": {"images": [base64.b64encode(IMAGES[0]).decode()], "ids": [0], "texts": ["x"]}},
            422,
            "invalid_pairs",
        ),
        (
            f"/v1/heads/{BINARY}/predict",
            {"json": {"images": [base64.b64encode(IMAGES[0]).decode()] * 5, "texts": ["x"] * 5}},
            422,
            "too_many_images",
        ),
    ],
)
def test_bad_input_is_a_4xx_and_the_server_stays_up(
    hclient: TestClient, path: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    r = hclient.post(path, **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]
    # nothing else is affected: other routes, and the head itself, still answer
    assert hclient.get("/healthz").status_code == 200
    ok = hclient.post(f"/v1/heads/{BINARY}/predict", json={"ids": [0], "texts": ["a red circle"]})
    assert ok.status_code == 200 and len(ok.json()["results"]) == 1
    files = [("images", ("a.png", IMAGES[0], "image/png"))]
    assert hclient.post("/v1/classify", files=files, data={"label_set": "shapes"}).status_code == 200
    assert hclient.post("/v1/search", json={"text": "a red circle", "k": 2}).status_code == 200


def test_without_heads_or_index(make_client: Any, heads: dict[str, Path]) -> None:
    _, c = make_client()  # no heads, no index
    assert c.get("/v1/heads").json() == {"heads": []}
    r = c.post(f"/v1/heads/{BINARY}/predict", json={"ids": [0], "texts": ["x"]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_head"
    _, c = make_client(heads=[heads[BINARY]])  # a head, no index: ids cannot be looked up
    r = c.post(f"/v1/heads/{BINARY}/predict", json={"ids": [0], "texts": ["x"]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "no_index"
    files = [("images", ("a.png", IMAGES[0], "image/png"))]
    assert c.post(f"/v1/heads/{BINARY}/predict", files=files, data={"texts": ["x"]}).status_code == 200


def test_openapi_documents_the_routes(hclient: TestClient) -> None:
    schema = hclient.get("/openapi.json").json()
    post = schema["paths"]["/v1/heads/{name}/predict"]["post"]
    assert set(post["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert {"images", "texts", "ids"} <= set(schema["components"]["schemas"]["PredictRequest"]["properties"])
    assert {"404", "422", "415"} <= set(post["responses"])
    assert "/v1/heads" in schema["paths"] and "/v1/heads/{name}" in schema["paths"]


# --- `clipforge serve --head`: refused before uvicorn starts, with one line ---
def serve(*args: str) -> int:
    from clipforge.cli import main

    return main(["serve", *args, "--port", "1"])  # never reached when the preflight fails


@pytest.mark.parametrize(
    ("which", "message"),
    [("other-bundle", "trained on bundle"), ("missing", "is not a clipforge head"), ("corrupt", "does not match")],
)
def test_serve_refuses_a_bad_head(
    micro_bundle: Path, heads: dict[str, Path], tmp_path: Path, capsys: Any, which: str, message: str
) -> None:
    import shutil

    path = heads.get(which, tmp_path / which)
    if which == "corrupt":
        path = tmp_path / "corrupt"
        shutil.copytree(heads[BINARY], path)
        weights = path / "head.safetensors"
        weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)
    assert serve("--bundle", str(micro_bundle), "--head", str(heads[MULTICLASS]), "--head", str(path)) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err


def test_serve_refuses_two_heads_of_one_name(micro_bundle: Path, heads: dict[str, Path], capsys: Any) -> None:
    assert serve("--bundle", str(micro_bundle), "--head", str(heads[BINARY]), "--head", str(heads["same-name"])) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "names must be unique" in err, err


def test_heads_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from clipforge.service.settings import Settings

    monkeypatch.setenv("CLIPFORGE_HEADS", "a/one, b/two")
    assert Settings().heads == [Path("a/one"), Path("b/two")]
    monkeypatch.setenv("CLIPFORGE_HEADS", '["with,comma", "c"]')
    assert Settings().heads == [Path("with,comma"), Path("c")]
    monkeypatch.setenv("CLIPFORGE_HEADS", "")
    assert Settings().heads == []


def test_ids_over_a_real_index(micro_bundle: Path, bundle: Any, heads: dict[str, Path], tmp_path: Path) -> None:
    """`ids` read the stored vectors of a real FAISS + SQLite index (Index.image_vectors)."""
    import json

    from clipforge.index import Index
    from clipforge.service.app import create_app
    from clipforge.service.settings import Settings

    folder = tmp_path / "images"
    folder.mkdir()
    for i, (data, caption, meta) in enumerate(shape_items()):
        (folder / f"img{i}.png").write_bytes(data)
        (folder / f"img{i}.txt").write_text(caption)
        (folder / f"img{i}.json").write_text(json.dumps(meta))
    Index.build(bundle, str(folder), tmp_path / "idx", progress=False).close()
    settings = Settings(bundle=micro_bundle, index=tmp_path / "idx", heads=[heads[BINARY]], max_wait_ms=1.0)
    with TestClient(create_app(settings)) as c:
        hits = c.post("/v1/search", json={"text": "x", "k": 8}).json()["results"]
        by_caption = {h["caption"]: h["id"] for h in hits}
        ids = [by_caption["a red circle"], by_caption["a blue square"]]
        texts = ["is there a red circle?", "is there a red circle?"]
        r = c.post(f"/v1/heads/{BINARY}/predict", json={"ids": ids, "texts": texts})
        assert r.status_code == 200, r.text
        images = [png_bytes(COLORS["red"]), png_bytes(COLORS["blue"], shape="square")]
        stored = np.concatenate([encode_reference(bundle, b)[None] for b in images])
        np.testing.assert_allclose(probs(r.json()), offline(bundle, heads[BINARY], stored, texts), atol=1e-5)
        r = c.post(f"/v1/heads/{BINARY}/predict", json={"ids": [ids[0], 12345], "texts": texts})
        assert r.status_code == 404 and "12345" in r.json()["error"]["message"]


@pytest.mark.slow
def test_predict_fuzzed_against_its_schema(micro_bundle: Path, bundle: Any, heads: dict[str, Path]) -> None:
    """Schemathesis, valid and invalid bodies for the predict route of a served head (the name fixed, or
    every request would be a 404): no 5xx, documented statuses and bodies."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

    from clipforge.service.app import create_app
    from clipforge.service.deps import maybe_index
    from clipforge.service.settings import Settings
    from clipforge.service.store import IndexHandle

    app = create_app(Settings(bundle=micro_bundle, heads=[heads[BINARY]], max_wait_ms=1.0, **DEFAULTS))
    handle = IndexHandle(FakeIndex(bundle, shape_items()))
    app.dependency_overrides[maybe_index] = lambda: handle
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operation = next(r.ok() for r in schema.get_all_operations() if r.ok().path == "/v1/heads/{name}/predict")
    statuses: list[int] = []
    try:
        for mode in ("positive", "negative"):

            @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
            @settings(
                max_examples=40,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Any) -> None:
                case.path_parameters = {"name": BINARY}
                response = case.call_and_validate(
                    checks=[not_a_server_error, status_code_conformance, response_schema_conformance]
                )
                statuses.append(response.status_code)

            run()
    finally:
        schemathesis.python.asgi.shutdown_lifespans()
        handle.close()
    assert all(s < 500 for s in statuses) and any(400 <= s < 500 for s in statuses), statuses


def test_heads_are_reads_behind_the_read_key(make_client: Any, heads: dict[str, Path]) -> None:
    _, c = make_client(heads=[heads[BINARY]], read_api_key="reader")
    files = [("images", ("a.png", IMAGES[0], "image/png"))]
    for method, path, kw in [
        ("GET", "/v1/heads", {}),
        ("GET", f"/v1/heads/{BINARY}", {}),
        ("POST", f"/v1/heads/{BINARY}/predict", {"files": files, "data": {"texts": ["x"]}}),
    ]:
        assert c.request(method, path, **kw).status_code == 401
        assert c.request(method, path, headers={"X-API-Key": "reader"}, **kw).status_code == 200


def test_a_head_trained_by_fuse_train_served_from_its_run_folder(
    micro_bundle: Path, bundle: Any, tmp_path: Path
) -> None:
    """End to end on a TRAINED head: `clipforge fuse train` on a question set, then `serve --head NAME=RUN`
    (the run folder `fuse train` prints, renamed): /v1/heads shows the training's metrics, answers equal
    `clipforge fuse predict` on the same pairs, bad input is a 4xx and the head keeps answering."""
    import json

    from clipforge.cli import main
    from clipforge.service.app import create_app
    from clipforge.service.settings import Settings
    from clipforge.training.synth import write_questions

    q = tmp_path / "q"
    write_questions(q, train=40, test=8, seed=5)
    sets = [f"data.bundle={micro_bundle}", f"data.train={q / 'train.jsonl'}", f"data.val={q / 'test.jsonl'}",
            f"data.cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path / 'run'}", "head.kind=gated"]  # fmt: skip
    assert main(["fuse", "train", "smoke", *[x for kv in sets for x in ("--set", kv)]]) == 0
    rows = [json.loads(line) for line in (q / "test.jsonl").read_text().splitlines()[:6]]
    table = tmp_path / "pairs.jsonl"
    table.write_text("".join(json.dumps({"image": str(q / r["image"]), "text": r["text"]}) + "\n" for r in rows))
    assert (
        main(["fuse", "predict", str(tmp_path / "run"), "--data", str(table), "--out", str(tmp_path / "a.jsonl")]) == 0
    )
    want = [json.loads(line)["probabilities"] for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    trained = json.loads((tmp_path / "run" / "head" / "head.json").read_text())

    settings = Settings(bundle=micro_bundle, heads=[f"asked={tmp_path / 'run'}"])
    with TestClient(create_app(settings)) as c:
        (listed,) = c.get("/v1/heads").json()["heads"]
        assert listed["name"] == "asked" and listed["kind"] == "gated"
        assert listed["metrics"]["accuracy"] == trained["metrics"]["accuracy"]
        files = [("images", (f"{i}.jpg", (q / r["image"]).read_bytes(), "image/jpeg")) for i, r in enumerate(rows)]
        r = c.post("/v1/heads/asked/predict", files=files, data={"texts": [r["text"] for r in rows]})
        assert r.status_code == 200, r.text
        got = [res["probabilities"] for res in r.json()["results"]]
        for g, w in zip(got, want, strict=True):
            assert g == pytest.approx(w, abs=1e-5)
        assert len({round(g["yes"], 6) for g in got}) > 1  # a trained head tells these pairs apart
        bad = [
            ({"files": files[:1], "data": {}}, 422),  # no text
            ({"files": files[:2], "data": {"texts": ["one text"]}}, 422),  # counts differ
            ({"files": [("images", ("x.jpg", b"not an image", "image/jpeg"))], "data": {"texts": ["x"]}}, 400),
        ]
        for kwargs, status in bad:
            res = c.post("/v1/heads/asked/predict", **kwargs)
            assert res.status_code == status and res.json()["error"]["message"], res.text
        assert c.post("/v1/heads/gated/predict", files=files[:1], data={"texts": ["x"]}).status_code == 404
        again = c.post("/v1/heads/asked/predict", files=files[:1], data={"texts": [rows[0]["text"]]})
        assert again.json()["results"][0]["probabilities"] == pytest.approx(want[0], abs=1e-5)


def test_head_entries_name_or_path(tmp_path: Path) -> None:
    from clipforge.service.fusion import named_path

    assert named_path("yes-no=runs/a") == ("yes-no", Path("runs/a"))
    assert named_path("runs/a") == (None, Path("runs/a"))
    odd = tmp_path / "k=v"  # a folder whose own name has "=": it exists, so it is a path
    odd.mkdir()
    assert named_path(str(odd)) == (None, odd)
    assert named_path("not a name=x") == (None, Path("not a name=x"))  # not a servable name: a path
    assert named_path("yes-no=~/heads/a") == ("yes-no", Path.home() / "heads" / "a")
    with pytest.raises(ValueError, match="names no folder"):
        named_path("yes-no=")  # would have served the current directory
    assert named_path("abc\n=x")[0] is None  # a name must match whole: no trailing newline
