"""API keys for writes (and optionally reads), closed CORS, settings from the environment, the CLI."""

from __future__ import annotations

import argparse
import base64
from pathlib import Path

import pytest

from clipforge.service.settings import Settings
from tests.service.conftest import WRITE_KEY, AppFactory
from tests.service.fakes import FakeIndex, png_bytes
from tests.service.test_bad_input import assert_error

ADD = {"images": [base64.b64encode(png_bytes()).decode()], "captions": ["x"]}


def test_writes_are_disabled_without_a_configured_key(make_client: AppFactory, fake_index: FakeIndex) -> None:
    _, c = make_client(index=fake_index)
    assert_error(c.post("/v1/items", json=ADD), 403, "writes_disabled")
    assert_error(c.post("/v1/items", json=ADD, headers={"X-API-Key": "anything"}), 403, "writes_disabled")
    assert_error(c.delete("/v1/items/1", headers={"X-API-Key": "anything"}), 403, "writes_disabled")
    assert len(fake_index) == 8
    assert c.get("/v1/items/1").status_code == 200  # reads stay open
    assert c.get("/v1/info").json()["writes_enabled"] is False


def test_writes_need_the_right_key(make_client: AppFactory, fake_index: FakeIndex) -> None:
    _, c = make_client(index=fake_index, api_key=WRITE_KEY)
    assert_error(c.post("/v1/items", json=ADD), 401, "unauthorized")
    assert_error(c.post("/v1/items", json=ADD, headers={"X-API-Key": WRITE_KEY + "x"}), 401, "unauthorized")
    assert_error(c.post("/v1/items", json=ADD, headers={"X-API-Key": "ключ".encode()}), 401, "unauthorized")
    assert_error(c.delete("/v1/items/1", headers={"X-API-Key": "wrong"}), 401, "unauthorized")
    assert len(fake_index) == 8
    assert c.post("/v1/items", json=ADD, headers={"X-API-Key": WRITE_KEY}).status_code == 201
    assert c.delete("/v1/items/1", headers={"X-API-Key": WRITE_KEY}).status_code == 200
    assert len(fake_index) == 8


def test_reads_can_require_a_key(make_client: AppFactory, fake_index: FakeIndex) -> None:
    _, c = make_client(index=fake_index, api_key=WRITE_KEY, read_api_key="reader")
    for method, path, kw in [
        ("post", "/v1/classify", {"json": {"images": ADD["images"], "labels": ["a"]}}),
        ("post", "/v1/embed", {"json": {"texts": ["a"]}}),
        ("post", "/v1/search", {"json": {"text": "a"}}),
        ("get", "/v1/items/1", {}),
        ("get", "/v1/items/1/image", {}),
        ("get", "/v1/info", {}),
    ]:
        assert_error(getattr(c, method)(path, **kw), 401, "unauthorized")
        assert getattr(c, method)(path, headers={"X-API-Key": "reader"}, **kw).status_code == 200, path
        assert getattr(c, method)(path, headers={"X-API-Key": WRITE_KEY}, **kw).status_code == 200, path
    assert_error(c.post("/v1/items", json=ADD, headers={"X-API-Key": "reader"}), 401)  # a read key cannot write
    assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200  # probes stay open


def test_cors_is_closed_unless_configured(make_client: AppFactory) -> None:
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    _, closed = make_client()
    r = closed.get("/v1/info", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    assert "access-control-allow-origin" not in closed.options("/v1/embed", headers=preflight).headers

    _, open_ = make_client(cors_origins=["https://app.example"])
    ok = open_.options("/v1/embed", headers={**preflight, "Origin": "https://app.example"})
    assert ok.headers["access-control-allow-origin"] == "https://app.example"
    assert (
        "access-control-allow-origin" not in open_.get("/v1/info", headers={"Origin": "https://evil.example"}).headers
    )


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CLIPFORGE_BUNDLE", str(tmp_path))
    monkeypatch.setenv("CLIPFORGE_MAX_K", "7")
    monkeypatch.setenv("CLIPFORGE_API_KEY", "s3cret")
    monkeypatch.setenv("CLIPFORGE_LABEL_SETS", '{"pets": ["cat", "dog"]}')
    monkeypatch.setenv("CLIPFORGE_CORS_ORIGINS", '["https://a.example"]')
    s = Settings()
    assert s.bundle == tmp_path and s.max_k == 7 and s.writes_enabled and s.label_sets == {"pets": ["cat", "dog"]}
    assert s.cors_origins == ["https://a.example"] and "s3cret" not in repr(s)
    monkeypatch.setenv("CLIPFORGE_TEMPLATES", '["no slot"]')
    with pytest.raises(ValueError, match="has no '{}'"):
        Settings()


def test_cli_registers_serve() -> None:
    from clipforge.service.cli import cmd_serve, register

    parser = argparse.ArgumentParser(prog="clipforge")
    register(parser.add_subparsers(dest="command"))
    a = parser.parse_args(["serve", "--bundle", "b", "--index", "i", "--host", "127.0.0.1", "--port", "8123"])
    assert (a.func, a.bundle, a.index, a.host, a.port) == (cmd_serve, "b", "i", "127.0.0.1", 8123)
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--port", "http"])


def test_cli_without_a_bundle_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from clipforge.service.cli import cmd_serve, register

    monkeypatch.delenv("CLIPFORGE_BUNDLE", raising=False)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    with pytest.raises(ValueError, match="no bundle"):
        cmd_serve(parser.parse_args(["serve"]))
