"""`clipforge serve --workers 2`: two uvicorn processes on one port, one metrics view, one index."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.service.conftest import WRITE_KEY, free_port
from tests.service.fakes import png_bytes, shape_items

pytest.importorskip("clipforge.index")
ROOT = Path(__file__).resolve().parents[2]


def call(url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, Any]:
    """One request on a new connection (so that either worker may accept it)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return r.status, json.loads(raw) if r.headers.get_content_type() == "application/json" else raw.decode()
    except urllib.error.HTTPError as exn:
        return exn.code, exn.read()


def pids_with_metrics(metrics_dir: Path) -> set[str]:
    return {m.group(1) for p in metrics_dir.glob("counter_*.db") if (m := re.search(r"_(\d+)\.db$", p.name))}


def test_two_workers_share_port_metrics_and_index(micro_bundle: Path, bundle: Any, tmp_path: Path) -> None:
    from clipforge.index import Index

    folder = tmp_path / "images"
    folder.mkdir()
    for i, (data, caption, _) in enumerate(shape_items()):
        (folder / f"img{i}.png").write_bytes(data)
        (folder / f"img{i}.txt").write_text(caption)
    Index.build(bundle, str(folder), tmp_path / "idx", progress=False).close()

    port, metrics_dir = free_port(), tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {
        **os.environ,
        "CLIPFORGE_API_KEY": WRITE_KEY,
        "CLIPFORGE_MAX_WAIT_MS": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    cmd = [
        sys.executable,
        "-m",
        "clipforge",
        "serve",
        "--bundle",
        str(micro_bundle),
        "--index",
        str(tmp_path / "idx"),
        "--port",
        str(port),
        "--workers",
        "2",
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    server = subprocess.Popen(cmd, env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        # requests on fresh connections until both workers have answered some (each writes its own files)
        sent, deadline = 0, time.monotonic() + 120
        while sent < 20 or len(pids_with_metrics(metrics_dir)) < 2:
            assert server.poll() is None, "the server exited"
            assert time.monotonic() < deadline, f"both workers never answered ({pids_with_metrics(metrics_dir)})"
            try:
                status, out = call(f"{base}/v1/embed", {"texts": [f"a red circle {sent}"]})
            except (ConnectionError, urllib.error.URLError):
                time.sleep(0.2)  # not listening yet
                continue
            assert status == 200 and len(out["text_embeddings"]) == 1, out
            sent += 1

        # any worker's /metrics adds up both workers' counts
        for _ in range(4):
            status, text = call(f"{base}/metrics")
            got = re.search(r'clipforge_requests_total\{method="POST",route="/v1/embed",status="200"\} (\S+)', text)
            assert status == 200 and got and float(got.group(1)) == sent, (sent, got)

        # an item added through one worker is served by both (each follows the index directory)
        image = base64.b64encode(png_bytes((10, 200, 200), shape="square")).decode()
        status, out = call(f"{base}/v1/items", {"images": [image], "captions": ["teal"]}, {"X-API-Key": WRITE_KEY})
        assert status == 201, out
        (new_id,) = out["ids"]
        for _ in range(10):
            status, item = call(f"{base}/v1/items/{new_id}")
            assert status == 200 and item["caption"] == "teal"
            status, info = call(f"{base}/v1/info")
            assert info["index"]["count"] == len(shape_items()) + 1
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
