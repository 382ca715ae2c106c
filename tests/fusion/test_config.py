"""Fusion configs (presets, overrides, refusals) and the equal-budget width rule of `fuse compare`."""

from __future__ import annotations

import pytest

from clipforge.configfile import ConfigError
from clipforge.fusion.config import load_fuse_config
from clipforge.fusion.kinds import KINDS, build_fusion
from clipforge.fusion.train import budget_width


def test_presets_and_overrides() -> None:
    for name in ("smoke", "synth-questions", "synth-questions-3way", "synth-questions-binding"):
        cfg = load_fuse_config(name)
        assert cfg.head.kind in KINDS and cfg.fit.epochs >= 1
    cfg = load_fuse_config("smoke", ["head.kind=tensor", "fit.lr=1e-3", "data.group_keys=[a, b]"])
    assert (cfg.head.kind, cfg.fit.lr, cfg.data.group_keys) == ("tensor", 1e-3, ("a", "b"))
    for bad, match in (
        ("head.kind=xor", "head.kind"),
        ("head.task=regression", "head.task"),
        ("fit.epochs=0", "fit.epochs"),
        ("head.colour=1", "unknown config key"),
        ("head.labels=[a, b, c]", "two labels"),
    ):
        with pytest.raises(ConfigError, match=match):
            load_fuse_config("smoke", [bad])


@pytest.mark.parametrize("kind", ["additive", "concat", "multiplicative", "tensor", "lowrank", "gated"])
def test_budget_width_is_the_largest_that_fits(kind: str) -> None:
    budget = 3000
    p = budget_width(kind, 64, 1, budget, rank=4, hidden=16)
    assert build_fusion(kind, 64, 1, width=p, rank=4, hidden=16).n_params() <= budget
    assert build_fusion(kind, 64, 1, width=p + 1, rank=4, hidden=16).n_params() > budget
