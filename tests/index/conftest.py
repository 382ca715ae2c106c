"""Index fixtures: a briefly trained micro bundle (so retrieval means something) and an index built with it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from clipforge.encoders.bundle import Bundle, load_bundle
from clipforge.index import Index


@pytest.fixture(scope="session")
def trained_bundle(synth_data: dict, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """cf-micro-vit trained for 20 steps of 64 on the synthetic shapes: it learns colours (~15 s on 2 cores)."""
    from clipforge.training.config import load_config
    from clipforge.training.loop import train

    out = tmp_path_factory.mktemp("index-train")
    cfg = load_config(
        "smoke",
        [
            f"out_dir={out}",
            f"data.train=['{synth_data['train']}']",
            f"data.val={synth_data['val']}",
            "data.zeroshot=null",
            "train.samples=1280",
            "train.batch_size=64",
            "train.ckpt_every=0",
            "train.log_every=50",
            "eval.val_samples=16",
            "optim.lr=3e-3",
            "optim.warmup_steps=5",
        ],
    )
    summary = train(cfg, progress=False)
    return load_bundle(summary["bundle"], device="cpu")


@pytest.fixture(scope="session")
def built_index(trained_bundle: Bundle, synth_data: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index of the 600 training images (exact Flat); tests that modify it work on a copy."""
    out = tmp_path_factory.mktemp("index-built") / "idx"
    Index.build(trained_bundle, synth_data["train"], out, progress=False).close()
    return out


@pytest.fixture
def index_copy(built_index: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "idx"
    shutil.copytree(built_index, dst)
    return dst
