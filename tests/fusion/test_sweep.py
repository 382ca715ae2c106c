"""`fuse compare --budgets`: every kind at several parameter budgets, one table, one page of curves."""

from __future__ import annotations

import json
import re
from dataclasses import replace
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
    captured = capsys.readouterr()
    printed = captured.out
    # one bar over all 2 budgets x 5 kinds x 2 seeds, with a rate; no bar per head's epochs
    assert "fuse sweep" in captured.err and "20/20" in captured.err and re.search(r"head/s|s/head", captured.err)
    assert "epoch" not in captured.err
    assert "mean ± sd of 2 seeds" in printed and " ± " in printed.splitlines()[2]
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
    # one seed each: exactly the one-dimensional paired bootstrap this replaced (mean of a - b, same draws)
    d = a - b
    boots = d[np.random.default_rng(0).integers(0, 500, size=(300, 500))].mean(1)
    lo, hi = np.quantile(boots, [(1 - 0.95) / 2, 1 - (1 - 0.95) / 2])  # as the old code wrote its levels
    for x, y in ((a, b), (a[None], b[None])):
        g = bootstrap_gain(x, y, n_boot=300)
        assert (g["gain"], g["lo"], g["hi"]) == (float(d.mean()), float(lo), float(hi))
    tenths = bootstrap_gain(np.array([1.0] * 7 + [0.0] * 3), np.array([1.0] * 6 + [0.0] * 4), n_boot=10)
    assert tenths["gain"] == float(np.mean(np.array([0.0] * 6 + [1.0] + [0.0] * 3)))  # not 0.7 - 0.6
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
    with pytest.raises(ValueError, match=r"\[N\] or \[seeds, N\]"):
        bootstrap_gain(np.ones((2, 2, 5)), np.ones((2, 2, 5)))
    with pytest.raises(ValueError, match="at least 1"):
        bootstrap_gain(a, b, n_boot=0)


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
    stale = tmp_path / "cmp" / "tensor" / "seeds" / "seed-99"  # an earlier run's extra seed: not this run's
    stale.mkdir(parents=True)
    result = compare(cfg, ["additive", "tensor"], progress=False, boot=200, seeds=3)
    assert not stale.exists()
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


def _sweep_cfg(questions: Path, bundle: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    from clipforge.fusion.config import load_fuse_config

    return load_fuse_config(
        "smoke",
        [
            f"out_dir={tmp_path / 'sw'}",
            f"data.bundle={bundle}",
            f"data.train={questions / 'train.jsonl'}",
            f"data.val={questions / 'test.jsonl'}",
            f"data.cache_dir={tmp_path / 'cache'}",
        ],
    )


def test_a_budget_below_some_kinds_smallest_head_is_refused_before_training(
    questions: Path, micro_bundle: Path, tmp_path: Path
) -> None:
    """Such a kind would get more parameters than the column says (budget_width falls back to width 1)."""
    from clipforge.fusion.sweep import sweep

    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "sweep.json").write_text("{}")  # an earlier sweep's result: a refused run keeps it
    with pytest.raises(ValueError, match=r"budget 50 is below the smallest (concat|tensor) head .*at least"):
        sweep(_sweep_cfg(questions, micro_bundle, tmp_path), ["late", "concat", "tensor"], [3000, 50], progress=False)
    assert sorted(p.name for p in (tmp_path / "sw").iterdir()) == ["sweep.json"]
    assert sweep(_sweep_cfg(questions, micro_bundle, tmp_path), ["late"], [5, 5], progress=False)["budgets"] == [5]


def test_a_single_compare_refuses_a_budget_below_some_kinds_smallest_head(
    questions: Path, micro_bundle: Path, tmp_path: Path
) -> None:
    """`fuse compare --set head.budget=N` (no sweep) refuses as `--budgets` does; it used to warn and train
    that kind at width 1, over the budget its column claimed."""
    from clipforge.fusion.compare import compare

    cfg = _sweep_cfg(questions, micro_bundle, tmp_path)
    cfg = replace(cfg, head=replace(cfg.head, budget=50))
    with pytest.raises(ValueError, match=r"budget 50 is below the smallest tensor head"):
        compare(cfg, ["late", "tensor"], progress=False)
    assert not Path(cfg.out_dir).exists()  # refused before anything was written or trained


def test_a_sweep_that_fails_part_way_leaves_no_stale_page(
    questions: Path, micro_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clipforge.fusion import sweep as sweep_module

    cfg = _sweep_cfg(questions, micro_bundle, tmp_path)
    sweep_module.sweep(cfg, ["late", "additive"], [1500, 3000], progress=False, boot=50)
    assert (tmp_path / "sw" / "sweep.html").is_file()
    real = sweep_module.compare

    def failing(c, kinds, **kw):  # type: ignore[no-untyped-def]
        if c.head.budget == 3000:
            raise RuntimeError("disk full")
        return real(c, kinds, **kw)

    monkeypatch.setattr(sweep_module, "compare", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        sweep_module.sweep(cfg, ["late", "additive"], [1500, 3000], progress=False, boot=50)
    assert not any((tmp_path / "sw" / name).exists() for name in sweep_module.OUTPUTS)


def test_an_empty_budgets_option_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from clipforge.cli import main

    assert main(["fuse", "compare", "smoke", "--budgets", "", "--set", f"out_dir={tmp_path / 'x'}"]) == 1
    assert "budgets must be" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_gain_bootstrap_draws_in_bounded_chunks_with_the_same_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A [n_boot, N] index array is 3.2 GB for 2,000 resamples of 100k test pairs; drawn in chunks, the
    numbers are exactly those of one draw (the same random stream), with one seed and with several."""
    from clipforge.fusion import metrics

    rng = np.random.default_rng(1)
    a, b = (rng.random((3, 700)) < 0.8).astype(float), (rng.random((2, 700)) < 0.7).astype(float)
    whole = [metrics.bootstrap_gain(a, b, n_boot=250), metrics.bootstrap_gain(a[0], b[0], n_boot=250)]
    drawn: list[tuple[int, int]] = []
    real = np.random.default_rng

    class Spy:  # numpy's Generator cannot be patched: wrap it
        def __init__(self, seed: int) -> None:
            self.g = real(seed)

        def integers(self, low, high=None, size=None):  # type: ignore[no-untyped-def]
            if high == 700:
                drawn.append(size)
            return self.g.integers(low, high, size=size)

    monkeypatch.setattr(metrics, "BOOT_CHUNK", 700 * 16)  # 16 resamples at a time
    monkeypatch.setattr(np.random, "default_rng", Spy)
    chunked = [metrics.bootstrap_gain(a, b, n_boot=250), metrics.bootstrap_gain(a[0], b[0], n_boot=250)]
    assert chunked == whole
    assert max(s[0] for s in drawn) == 16 and sum(s[0] for s in drawn) == 500
