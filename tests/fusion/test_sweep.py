"""`fuse compare --budgets`: every kind at several parameter budgets, one table, one page of curves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from clipforge.fusion.sweep import parse_budgets

KINDS = ["late", "additive", "concat", "lowrank", "gated"]


@pytest.mark.parametrize("spec", ["", "0,1200", "-5", "1200,abc", "1e3"])
def test_parse_budgets_refuses_what_is_not_a_parameter_count(spec: str) -> None:
    with pytest.raises(ValueError, match="budgets must be"):
        parse_budgets(spec)


def test_parse_budgets_sorts_and_dedups() -> None:
    assert parse_budgets(" 4800,1200,4800 ,") == [1200, 4800]


def test_sweep_cli_table_page_and_per_budget_runs(
    questions: Path, micro_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from clipforge.cli import main

    sets = [
        f"out_dir={tmp_path / 'sw'}",
        f"data.bundle={micro_bundle}",
        f"data.train={questions / 'train.jsonl'}",
        f"data.val={questions / 'test.jsonl'}",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    argv = [
        "fuse",
        "compare",
        "smoke",
        "--kinds",
        ",".join(KINDS),
        "--bootstrap",
        "200",
        "--budgets",
        "3000,1500",
        "--seeds",
        "2",
    ]
    assert main([*argv, *[x for kv in sets for x in ("--set", kv)]]) == 0
    printed = capsys.readouterr().out
    assert "≤ 1,500 params" in printed and "≤ 3,000 params" in printed and "best structured − concat" in printed

    out = tmp_path / "sw"
    s = json.loads((out / "sweep.json").read_text())
    assert s["budgets"] == [1500, 3000]
    for b in s["budgets"]:  # one ordinary compare per budget, and the sweep's points are its rows
        rows = {r["kind"]: r for r in json.loads((out / f"budget-{b}" / "compare.json").read_text())["rows"]}
        points = {p["kind"]: p for p in s["points"] if p["budget"] == b}
        assert list(points) == KINDS
        for k in KINDS:
            assert points[k]["params"] == rows[k]["params"] <= b
            assert points[k]["accuracy"] == rows[k]["accuracy"]
            assert points[k]["heldout/accuracy"] == rows[k]["heldout/accuracy"]
        best = max((rows[k] for k in ("lowrank", "gated")), key=lambda r: r["accuracy"])
        (v,) = [v for v in s["best_vs_concat"] if v["budget"] == b]
        assert v["kind"] == best["kind"]
        assert v["gain"] == pytest.approx(best["accuracy"] - rows["concat"]["accuracy"])  # paired: the difference
        assert v["lo"] <= v["gain"] <= v["hi"]
    p = {(q["kind"], q["budget"]): q for q in s["points"]}
    for k in KINDS[1:]:  # a larger budget buys a wider projection; late has 2 parameters per output, always
        assert p[k, 3000]["width"] > p[k, 1500]["width"] and p[k, 3000]["params"] > p[k, 1500]["params"]
    assert p["late", 1500]["params"] == p["late", 3000]["params"] == 2

    page = (out / "sweep.html").read_text()
    series = [json.loads(m.replace("&quot;", '"')) for m in re.findall(r"data-series='([^']*)'", page)]
    assert len(series) == 2  # all test pairs, and the heldout subset
    for kind, line in series[0].items():  # the picture draws exactly the numbers in sweep.json
        assert line["params"] == [p[kind, b]["params"] for b in s["budgets"]]
        assert line["accuracy"] == pytest.approx([100 * p[kind, b]["accuracy"] for b in s["budgets"]])
        assert line["sd"] == pytest.approx([100 * p[kind, b]["accuracy_sd"] for b in s["budgets"]])  # 2 seeds
    assert page.count('<tr data-kind="') == len(KINDS) and page.count('<tr data-budget="') == 2
    assert 'href="budget-1500/report.html"' in page and (out / "budget-1500" / "report.html").is_file()


def test_sweep_bad_budget_is_one_line_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from clipforge.cli import main

    code = main(["fuse", "compare", "smoke", "--budgets", "0", "--set", f"out_dir={tmp_path / 'x'}"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "budgets must be" in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_gain_interval_with_seeds_holds_training_noise() -> None:
    from clipforge.fusion.metrics import bootstrap_gain

    rng = np.random.default_rng(0)
    a, b = (rng.random(500) < 0.8).astype(float), (rng.random(500) < 0.7).astype(float)
    assert bootstrap_gain(a[None], b[None], n_boot=300) == bootstrap_gain(a, b, n_boot=300)  # one seed: as before
    # one kind whose two seeds are all right / all wrong, against a steady 50%: on average level, but which
    # seed you drew decides everything; the seed-averaged example-only interval would be [0, 0]
    lucky = np.stack([np.ones(500), np.zeros(500)])
    steady = np.full((1, 500), 0.5)
    g = bootstrap_gain(lucky, steady, n_boot=400)
    assert g["gain"] == pytest.approx(0.0) and g["lo"] == pytest.approx(-0.5) and g["hi"] == pytest.approx(0.5)
    flat = bootstrap_gain(lucky.mean(0), steady[0], n_boot=400)
    assert flat["lo"] == flat["hi"] == 0.0
    with pytest.raises(ValueError, match="same examples"):
        bootstrap_gain(np.ones((2, 5)), np.ones((1, 6)))


def test_compare_with_seeds_averages_and_keeps_every_head(questions: Path, micro_bundle: Path, tmp_path: Path) -> None:
    from clipforge.fusion.compare import compare, table_markdown
    from clipforge.fusion.config import load_fuse_config
    from clipforge.fusion.head import load_head

    cfg = load_fuse_config(
        "smoke",
        [
            f"out_dir={tmp_path / 'cmp'}",
            f"data.bundle={micro_bundle}",
            f"data.train={questions / 'train.jsonl'}",
            f"data.val={questions / 'test.jsonl'}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "fit.seed=5",
        ],
    )
    result = compare(cfg, ["additive", "tensor"], progress=False, boot=200, seeds=3)
    assert result["seeds"] == 3
    for r in result["rows"]:
        kind = r["kind"]
        heads = [tmp_path / "cmp" / kind / "head"] + [
            tmp_path / "cmp" / kind / "seeds" / f"seed-{s}" / "head" for s in (6, 7)
        ]
        stored = [json.loads((h / "head.json").read_text())["metrics"]["accuracy"] for h in heads]
        assert r["accuracy_seeds"] == pytest.approx(stored)  # each seed's own head, saved
        assert r["accuracy"] == pytest.approx(np.mean(stored))
        assert r["accuracy_sd"] == pytest.approx(np.std(stored, ddof=1))
        w0, w1 = (load_head(h).module.state_dict() for h in heads[:2])
        assert any(not np.allclose(w0[k].numpy(), w1[k].numpy()) for k in w0)  # another seed, other weights
    additive, tensor = result["rows"]
    g = tensor["gain_vs_additive"]  # the point gain is the difference of the seed means
    assert g["gain"] == pytest.approx(tensor["accuracy"] - additive["accuracy"]) and g["lo"] <= g["gain"] <= g["hi"]
    assert "3 seeds" in table_markdown(result) and " ± " in table_markdown(result)
    page = (tmp_path / "cmp" / "report.html").read_text()
    assert "trained with 3 seeds" in page and f"{100 * tensor['accuracy']:.1f} ± " in page
