"""Shared fixtures: everything a test needs is made here (synthetic shards, random-init bundles)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipforge.encoders.bundle import save_bundle
from clipforge.encoders.model import build_model, resolve_model_config


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small coloured-shapes set: 6 train shards of 100, 1 val shard, 2 zero-shot images per class."""
    from clipforge.training.synth import write_synth

    out = tmp_path_factory.mktemp("synth")
    summary = write_synth(out, train=600, val=100, per_class=2, shard_size=100, seed=1)
    summary["root"] = out
    return summary


@pytest.fixture(scope="session")
def micro_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init bundle of the micro ViT config, saved to disk."""
    import torch

    torch.manual_seed(0)
    arch, cfg = resolve_model_config("cf-micro-vit")
    out = tmp_path_factory.mktemp("bundles") / "micro"
    save_bundle(build_model(cfg), out, arch=arch, model_cfg=cfg)
    return out


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="session")
def chromium():
    """A headless Debian Chromium driven by Playwright (Playwright's own browser download is not used)."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()
