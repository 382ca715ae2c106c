"""The main job's fusion step on a micro bundle: three heads on one feature pass, a loadable head back."""

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
    head_dir = quickstart_fusion(micro_bundle, data, tmp_path / "fusion")
    out = capsys.readouterr().out
    assert "late" in out and "additive" in out and "multiplicative" in out and "held-out" in out
    fp = json.loads((micro_bundle / "bundle.json").read_text())["weights_sha256"]
    head = load_head(head_dir, fingerprint=fp)
    assert head.kind == "multiplicative" and head.labels == ["no", "yes"]
    assert {p.name for p in (tmp_path / "fusion").iterdir()} == {"cache", "late", "additive", "multiplicative"}
    assert len(list((tmp_path / "fusion" / "cache").glob("*.npz"))) == 2  # train and test, embedded once
