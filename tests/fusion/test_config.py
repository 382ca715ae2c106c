"""Fusion configs (presets, overrides, refusals) and the equal-budget width rule of `fuse compare`."""

from __future__ import annotations

import pytest

from clipforge.configfile import ConfigError
from clipforge.fusion.config import load_fuse_config
from clipforge.fusion.kinds import KINDS, build_fusion
from clipforge.fusion.train import budget_width, encode_targets


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
        ("head.labels=['Yes', 'yes']", "names a label twice"),
        ("name=red circle?", "served in a URL"),
        ('name="yes-no\\n"', "served in a URL"),  # YAML's "\n": a name ending in a newline
        ("head.labels=[no, yes]", r"got False \(YAML reads unquoted yes/no.* quote it\)"),
        ("head.width=0", None),  # fine alone: the check below is of width_text without width
    ):
        if match is None:
            load_fuse_config("smoke", [bad])
            continue
        with pytest.raises(ConfigError, match=match):
            load_fuse_config("smoke", [bad])


@pytest.mark.parametrize("kind", ["additive", "concat", "multiplicative", "tensor", "lowrank", "gated"])
def test_budget_width_is_the_largest_that_fits(kind: str) -> None:
    budget = 3000
    p = budget_width(kind, 64, 1, budget, rank=4, hidden=16)
    assert build_fusion(kind, 64, 1, width=p, rank=4, hidden=16).n_params() <= budget
    assert build_fusion(kind, 64, 1, width=p + 1, rank=4, hidden=16).n_params() > budget


def test_widths_a_kind_cannot_take_are_refused_up_front() -> None:
    with pytest.raises(ConfigError, match="width_text .* needs head.width > 0"):
        load_fuse_config("smoke", ["head.width=0", "head.width_text=8"])
    with pytest.raises(ConfigError, match="multiplicative fusion combines the two sides elementwise"):
        load_fuse_config("smoke", ["head.kind=multiplicative", "head.width=16", "head.width_text=8"])
    cfg = load_fuse_config("smoke", ["head.kind=tensor", "head.width=16", "head.width_text=8"])  # tensor takes two
    assert build_fusion("tensor", 32, 1, width=16, width_text=8).p_t == 8
    for kind in set(KINDS) - {"late"}:  # the module refuses the same, whoever builds it (late takes no widths)
        with pytest.raises(ValueError, match="needs head.width > 0"):
            build_fusion(kind, 32, 1, width=0, width_text=8)
    with pytest.raises(ValueError, match="additive fusion combines"):
        build_fusion("additive", 32, 1, width=16, width_text=8)
    assert cfg.head.width_text == 8


def test_compare_refuses_a_kind_that_cannot_take_the_widths_before_reading_data(tmp_path) -> None:
    """`--kinds all` with two widths: additive/multiplicative cannot take them; refused before any head trains
    (it used to fail after late and concat had trained), and before the (here absent) bundle is read."""
    from clipforge.fusion.compare import compare

    cfg = load_fuse_config(
        "smoke", ["head.kind=tensor", "head.width=16", "head.width_text=8", f"out_dir={tmp_path / 'cmp'}"]
    )
    with pytest.raises(ValueError, match="additive fusion combines the two sides elementwise"):
        compare(cfg, list(KINDS), progress=False)
    assert not (tmp_path / "cmp").exists()


@pytest.mark.parametrize(
    ("labels", "values", "expected"),
    [
        (["no", "yes"], ["yes", "no", "YES ", True, False, 1, 0, "true", "negative"], [1, 0, 1, 1, 0, 1, 0, 1, 0]),
        (["yes", "no"], ["yes", "no", "no", " Yes"], [0, 1, 1, 0]),  # positive "no": each answer its own class
        (["true", "false"], ["true", "false", True, False], [0, 1, 0, 1]),
        (["cat", "dog"], ["cat", "dog", "yes", "no"], [0, 1, 1, 0]),
    ],
)
def test_binary_labels_match_their_own_names_first(labels: list, values: list, expected: list) -> None:
    assert encode_targets(values, "binary", labels).tolist() == expected


def test_binary_synonyms_that_could_mean_either_label_are_refused() -> None:
    """With labels [yes, no] ("no" the positive), "true" or True could mean either: refused, not guessed (it
    used to read every value as the positive, "yes" included, and train a constant head)."""
    for v in ("true", True, "1", "false", False):
        with pytest.raises(ValueError, match="is neither 'yes' nor 'no'"):
            encode_targets([v], "binary", ["yes", "no"])
    for v, labels in (("yes", ["absent", "no"]), ("false", ["yes", "other"]), (True, ["absent", "no"])):
        with pytest.raises(ValueError, match="is neither"):  # "yes" must not be read as the positive "no"
            encode_targets([v], "binary", labels)
