"""The other inputs and tasks: WebDataset shards (multiclass, text from a json field), CSV (multilabel)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from clipforge.fusion.config import load_fuse_config
from clipforge.fusion.features import load_pairs
from clipforge.fusion.head import load_head
from clipforge.fusion.train import train_head
from clipforge.training.synth import draw_shape, jpeg_bytes


def test_shards_multiclass_with_json_text(micro_bundle: Path, tmp_path: Path) -> None:
    rng = random.Random(0)
    with wds.ShardWriter(str(tmp_path / "s-%02d.tar"), maxcount=15, verbose=0) as sink:
        for i in range(30):
            color, shape = rng.choice(["red", "blue"]), rng.choice(["circle", "square", "cross"])
            im, _ = draw_shape(color, shape, rng)
            sink.write(
                {
                    "__key__": f"{i:04d}",
                    "jpg": jpeg_bytes(im),
                    "json": json.dumps(
                        {"q": f"what shape is the {color} thing?", "answer": shape, "heldout": i % 5 == 0}
                    ),
                }
            )
    spec = str(tmp_path / "s-{00..01}.tar")
    pairs = load_pairs(
        spec,
        micro_bundle,
        text_key="json:q",
        label_key="answer",
        group_keys=("heldout",),
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    assert len(pairs) == 30 and len(pairs.texts) == 2 and pairs.groups["heldout"].sum() == 6
    cfg = load_fuse_config(
        "smoke",
        [
            f"out_dir={tmp_path / 'run'}",
            f"data.bundle={micro_bundle}",
            f"data.train={spec}",
            f"data.val={spec}",
            "data.text_key=json:q",
            "data.label_key=answer",
            f"data.cache_dir={tmp_path / 'cache'}",
            "head.task=multiclass",
            "head.kind=lowrank",
        ],
    )
    run = train_head(cfg, progress=False)
    assert run["feature_cache_hit"]
    head = load_head(run["head"])
    assert head.task == "multiclass" and head.labels == ["circle", "cross", "square"]
    probs = head.predict(*pairs.pairs())
    assert probs.shape == (30, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert len(run["full_metrics"]["confusion"]) == 3 and "heldout/accuracy" in run["metrics"]


def test_csv_multilabel(micro_bundle: Path, tmp_path: Path) -> None:
    """A CSV with its own column names; multilabel names separated by '|' (a JSON table would give a list)."""
    rng = random.Random(1)
    (tmp_path / "img").mkdir()
    with open(tmp_path / "t.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "question", "tags"])
        for i in range(24):
            color, shape = rng.choice(["red", "blue"]), rng.choice(["circle", "ring"])
            draw_shape(color, shape, rng)[0].save(tmp_path / "img" / f"{i}.jpg")
            w.writerow([f"img/{i}.jpg", "which tags?", f"{color}|{shape}" if i % 2 else color])
    table = str(tmp_path / "t.csv")
    cfg = load_fuse_config(
        "smoke",
        [
            f"out_dir={tmp_path / 'run'}",
            f"data.bundle={micro_bundle}",
            f"data.train={table}",
            f"data.val={table}",
            "data.image_key=path",
            "data.text_key=question",
            "data.label_key=tags",
            "data.group_keys=[]",
            f"data.cache_dir={tmp_path / 'cache'}",
            "head.task=multilabel",
            "head.kind=gated",
        ],
    )
    run = train_head(cfg, progress=False)
    head = load_head(run["head"])
    assert head.labels == ["blue", "circle", "red", "ring"] and head.task == "multilabel"
    probs = head.predict(np.eye(1, head.dim, dtype=np.float32), np.eye(1, head.dim, dtype=np.float32))
    assert probs.shape == (1, 4) and ((probs > 0) & (probs < 1)).all()
    assert 0 <= run["metrics"]["exact_match"] <= 1 and run["metrics"]["n"] == 24


def test_shard_samples_without_the_label_field_are_reported(micro_bundle: Path, tmp_path: Path, caplog) -> None:
    """Half the samples name their answer `answer` instead of `label`: they were dropped without a word, and
    with none labelled the error gave no reason."""
    rng = random.Random(1)
    with wds.TarWriter(str(tmp_path / "s.tar")) as sink:
        for i in range(12):
            im, _ = draw_shape("red", "circle", rng)
            key = "label" if i % 2 else "answer"
            sink.write(
                {"__key__": f"{i:04d}", "jpg": jpeg_bytes(im), "txt": "red circle?", "json": json.dumps({key: "yes"})}
            )
    kw = {"cache_dir": tmp_path / "cache", "progress": False, "group_keys": ()}
    with caplog.at_level("WARNING", logger="clipforge.fusion.features"):
        pairs = load_pairs(str(tmp_path / "s.tar"), micro_bundle, **kw)
    assert len(pairs) == 6
    assert "incomplete: 6" in caplog.text and "'label' field" in caplog.text
    with pytest.raises(ValueError, match=r"no usable .* rows \(incomplete: 12; the label is the json member's 'nope'"):
        load_pairs(str(tmp_path / "s.tar"), micro_bundle, label_key="nope", **kw)
