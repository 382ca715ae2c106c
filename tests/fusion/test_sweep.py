"""`fuse compare --budgets`: every kind at several parameter budgets, one table, one page of curves."""

from __future__ import annotations

import json
import re
from pathlib import Path

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
    argv = ["fuse", "compare", "smoke", "--kinds", ",".join(KINDS), "--bootstrap", "200", "--budgets", "3000,1500"]
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
    assert page.count('<tr data-kind="') == len(KINDS) and page.count('<tr data-budget="') == 2
    assert 'href="budget-1500/report.html"' in page and (out / "budget-1500" / "report.html").is_file()


def test_sweep_bad_budget_is_one_line_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from clipforge.cli import main

    code = main(["fuse", "compare", "smoke", "--budgets", "0", "--set", f"out_dir={tmp_path / 'x'}"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "budgets must be" in err and "\n" not in err
    assert not (tmp_path / "x").exists()
