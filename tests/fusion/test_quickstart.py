"""The main job's fusion step on a micro bundle: per task three heads on one feature pass; two served heads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipforge.fusion.head import load_head
from clipforge.fusion.quickstart import quickstart_fusion


def test_quickstart_fusion(micro_bundle: Path, questions: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "synth"
    data.mkdir()
    (data / "questions").symlink_to(questions)  # present: the step must not write the full-size set
    heads = quickstart_fusion(micro_bundle, data, tmp_path / "fusion")
    out = capsys.readouterr().out
    assert "late" in out and "additive" in out and "multiplicative" in out and "held-out" in out
    assert "chance 0.500" in out and "chance 0.333" in out
    fp = json.loads((micro_bundle / "bundle.json").read_text())["weights_sha256"]
    loaded = [load_head(h, fingerprint=fp) for h in heads]
    assert [(h.name, h.kind, h.labels) for h in loaded] == [
        ("yes-no", "multiplicative", ["no", "yes"]),
        ("yes-no-absent", "multiplicative", ["yes", "no", "absent"]),
    ]  # names unique: the service loads both
    assert {p.name for p in (tmp_path / "fusion").iterdir()} == {"cache", "yes-no", "yes-no-absent"}
    for task in ("yes-no", "yes-no-absent"):
        assert {p.name for p in (tmp_path / "fusion" / task).iterdir()} == {"late", "additive", "multiplicative"}
    assert len(list((tmp_path / "fusion" / "cache").glob("*.npz"))) == 4  # each task's train and test, once
