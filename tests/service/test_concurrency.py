"""Concurrent HTTP requests are gathered into shared encoder batches, and each gets its own answer."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from clipforge.service.app import create_app
from clipforge.service.settings import Settings
from tests.service.conftest import run_async


def _histogram(text: str, name: str, kind: str) -> tuple[float, float]:
    count = float(re.search(rf'{name}_count{{kind="{kind}"}} (\S+)', text).group(1))  # type: ignore[union-attr]
    total = float(re.search(rf'{name}_sum{{kind="{kind}"}} (\S+)', text).group(1))  # type: ignore[union-attr]
    return count, total


def test_concurrent_requests_share_batches(micro_bundle: Path, bundle: Any) -> None:
    app = create_app(Settings(bundle=micro_bundle, max_wait_ms=50.0, max_batch_size=64))
    texts = [f"a photo of thing number {i}" for i in range(24)]

    async def main() -> tuple[list[httpx.Response], str]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                responses = await asyncio.gather(*(c.post("/v1/embed", json={"texts": [t]}) for t in texts))
                metrics = (await c.get("/metrics")).text
        return responses, metrics

    responses, metrics = run_async(main())
    assert all(r.status_code == 200 for r in responses)
    got = np.array([r.json()["text_embeddings"][0] for r in responses])
    np.testing.assert_allclose(got, bundle.encode_texts(texts).numpy(), atol=1e-5)  # nobody got another's row
    batches, items = _histogram(metrics, "clipforge_batch_size", "text")
    assert items == 24
    assert batches <= 4, f"24 concurrent requests ran as {batches} encoder batches"
