"""`clipforge fuse compare CONFIG --budgets B1,B2,...`: the comparison at several parameter budgets.

One budget is one point. Whether a structured fusion beats an MLP of the same size (`concat`) or is beaten by
it can depend on the size: a product term is cheap expressiveness when parameters are scarce, and an MLP
catches up once it has enough hidden units. The sweep runs `compare` once per budget (each in its own
folder, with its own report; the features come from the cache after the first) and draws accuracy against
the parameters each kind actually got, one line per kind, with the best structured kind's gain over
`concat` at each budget as a paired-bootstrap interval.
"""

from __future__ import annotations

import html
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tqdm import tqdm  # noqa: E402
from tqdm.contrib.logging import logging_redirect_tqdm  # noqa: E402

from clipforge.encoders.jsonfile import json_text  # noqa: E402
from clipforge.fusion.compare import check_budgets, ci_text, compare, pct  # noqa: E402
from clipforge.fusion.config import FuseConfig  # noqa: E402
from clipforge.fusion.report import best_structured, png_figure  # noqa: E402
from clipforge.fusion.train import load_sets  # noqa: E402

OUTPUTS = ("sweep.json", "sweep.md", "sweep.html")


def parse_budgets(spec: str) -> list[int]:
    """Parse "1200,4800" into [1200, 4800] (sorted, each once); a budget is a parameter count >= 1."""
    try:
        budgets = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"budgets must be comma-separated parameter counts, e.g. 1200,4800; got {spec!r}") from None
    if not budgets or budgets[0] < 1:
        raise ValueError(f"budgets must be parameter counts >= 1, e.g. 1200,4800; got {spec!r}")
    return budgets


def sweep(
    cfg: FuseConfig,
    kinds: list[str],
    budgets: list[int],
    *,
    progress: bool = True,
    boot: int = 2000,
    seeds: int = 1,
) -> dict[str, Any]:
    """`compare` at each budget into OUT/budget-N/; writes OUT/sweep.json, sweep.md and sweep.html. Returns
    what sweep.json holds, plus "report" (the page) and "results" (each budget's full `compare` result)."""
    budgets = sorted(set(budgets))
    if not budgets or budgets[0] < 1:
        raise ValueError(f"budgets must be parameter counts >= 1, got {budgets}")
    out = Path(cfg.out_dir)
    sets = load_sets(cfg, progress)  # read once: every budget's compare trains on these features
    check_budgets(cfg, kinds, budgets, sets[0])  # refused before anything in OUT is touched
    for name in OUTPUTS:  # a sweep that fails part-way must not leave an earlier run's page beside its folders
        (out / name).unlink(missing_ok=True)
    results: dict[int, dict[str, Any]] = {}
    total = len(budgets) * len(kinds) * seeds
    bar = tqdm(total=total, desc="fuse sweep", unit="head", disable=not progress, dynamic_ncols=True)
    with bar, logging_redirect_tqdm():  # a warning gets its own line above the bar
        for b in budgets:  # one bar over every head of every budget: rate and ETA for the whole sweep
            results[b] = compare(
                replace(cfg, head=replace(cfg.head, budget=b), out_dir=str(out / f"budget-{b}")),
                kinds,
                progress=progress,
                boot=boot,
                seeds=seeds,
                bar=bar,
                sets=sets,
            )
    first = results[budgets[0]]
    groups = list(first["groups"])
    points = [
        {
            "budget": b,
            "kind": r["kind"],
            "width": r["width"],
            "params": r["params"],
            "accuracy": r["accuracy"],
            "accuracy_sd": r.get("accuracy_sd"),
            **{f"{g}/accuracy": r.get(f"{g}/accuracy") for g in groups},
            "gain_vs_concat": r.get("gain_vs_concat"),
        }
        for b, res in results.items()
        for r in res["rows"]
    ]
    verdicts = []
    for b, res in results.items():
        best = best_structured(res["rows"])
        if best is not None and "gain_vs_concat" in best:
            verdicts.append({"budget": b, "kind": best["kind"], **best["gain_vs_concat"]})
    config = json.loads(json.dumps(first["config"]))
    config["head"]["budget"] = budgets  # the one setting that differs between the budgets' runs
    summary = {
        "config": config,
        "task": first["task"],
        "labels": first["labels"],
        "groups": first["groups"],
        "train_pairs": first["train_pairs"],
        "val_pairs": first["val_pairs"],
        "budgets": budgets,
        "seeds": seeds,
        "points": points,
        "best_vs_concat": verdicts,
        "reports": {b: res["report"] for b, res in results.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json_text(summary, indent=2))
    (out / "sweep.md").write_text(sweep_markdown(summary) + "\n")
    summary["report"] = str(write_sweep_report(summary, out / "sweep.html"))
    return summary | {"results": results}


def _by_kind(points: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    table: dict[str, dict[int, dict[str, Any]]] = {}
    for p in points:
        table.setdefault(p["kind"], {})[p["budget"]] = p
    return table


def _acc(p: dict[str, Any]) -> str:
    """Accuracy %, and ± its sd over seeds where there are several."""
    return pct(p["accuracy"]) + (f" ± {100 * p['accuracy_sd']:.1f}" if p.get("accuracy_sd") is not None else "")


def verdict(g: dict[str, Any]) -> str:
    return "above" if g["lo"] > 0 else ("below" if g["hi"] < 0 else "level (the interval holds 0)")


def sweep_markdown(s: dict[str, Any]) -> str:
    """Rows: kinds; columns: budgets; cells: accuracy % (held-out groups) and the parameters used."""
    groups = list(s["groups"])
    seeds = s.get("seeds", 1)
    kind = "kind" if seeds == 1 else f"kind (mean ± sd of {seeds} seeds)"
    head = [kind, *[f"≤ {b:,} params" for b in s["budgets"]]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind, cells in _by_kind(s["points"]).items():
        row = [kind]
        for b in s["budgets"]:
            p = cells.get(b)
            extra = "".join(f" / {g} {pct(p.get(f'{g}/accuracy'))}" for g in groups) if p else ""
            row.append(f"{_acc(p)}{extra} ({p['params']:,})" if p else "")
        lines.append("| " + " | ".join(row) + " |")
    by_budget = {v["budget"]: v for v in s["best_vs_concat"]}
    if by_budget:
        row = ["best structured − concat (95% CI)"]
        for b in s["budgets"]:
            v = by_budget.get(b)
            row.append(f"{v['kind']} {ci_text(v)}" if v else "")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def sweep_table_html(s: dict[str, Any]) -> str:
    """The same table as `sweep_markdown`, one cell per (kind, budget) with its numbers as data attributes."""
    groups = list(s["groups"])
    head = "".join(f"<th>≤ {b:,} params</th>" for b in s["budgets"])
    body = ""
    for kind, cells in _by_kind(s["points"]).items():
        tds = ""
        for b in s["budgets"]:
            p = cells.get(b)
            if p is None:
                tds += "<td></td>"
                continue
            extra = "".join(f"<br><small>{html.escape(g)} {pct(p.get(f'{g}/accuracy'))}</small>" for g in groups)
            tds += (
                f'<td data-budget="{b}" data-params="{p["params"]}" data-accuracy="{p["accuracy"]}">'
                f"{_acc(p)}{extra}<br><small>{p['params']:,} params</small></td>"
            )
        body += f'<tr data-kind="{html.escape(kind)}"><td>{html.escape(kind)}</td>{tds}</tr>'
    return f'<table id="sweep"><tr><th>kind (test accuracy %)</th>{head}</tr>{body}</table>'


def accuracy_plot(s: dict[str, Any], key: str, title: str) -> str:
    """Accuracy (or a group's) against the parameters each kind got, log x; `late` (2 per output, whatever
    the budget) as a dashed level."""
    fig, ax = plt.subplots(figsize=(6.2, 3.8))
    data: dict[str, dict[str, list[Any]]] = {}
    for kind, cells in _by_kind(s["points"]).items():
        shown = [cells[b] for b in s["budgets"] if cells.get(b, {}).get(key) is not None]
        if not shown:
            continue
        xs, ys = [c["params"] for c in shown], [100 * float(c[key]) for c in shown]
        data[kind] = {"params": xs, "accuracy": ys}
        sd = [c.get("accuracy_sd") for c in shown] if key == "accuracy" else []
        if sd and all(v is not None for v in sd):
            data[kind]["sd"] = [100 * float(v or 0) for v in sd]  # over training seeds: drawn as error bars
        if kind == "late":
            ax.axhline(ys[0], color="#888", linestyle="--", linewidth=1, label="late (cosine)")
        else:
            width = 2.2 if kind == "concat" else 1.4
            ax.errorbar(
                xs, ys, yerr=data[kind].get("sd"), marker="o", markersize=3, linewidth=width, capsize=2, label=kind
            )
    ax.set_xscale("log")
    ax.set_xlabel("parameters (the largest width within each budget)")
    ax.set_ylabel("accuracy %")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    if not data:  # e.g. a subset with no test pairs: no chart rather than an empty one
        plt.close(fig)
        return ""
    ax.legend(fontsize=7)
    return png_figure(fig, title, data)


def write_sweep_report(s: dict[str, Any], path: str | Path) -> Path:
    figs = [accuracy_plot(s, "accuracy", "test accuracy vs parameters")]
    figs += [accuracy_plot(s, f"{g}/accuracy", f"test accuracy, subset {g!r}, vs parameters") for g in s["groups"]]
    rows = "".join(
        f'<tr data-budget="{v["budget"]}"><td>{v["budget"]:,}</td><td>{html.escape(v["kind"])}</td>'
        f'<td data-value="{v["gain"]}">{ci_text(v)}</td>'
        f"<td>{html.escape(verdict(v))}</td></tr>"
        for v in s["best_vs_concat"]
    )
    verdicts = (
        "<table id='best-vs-concat'><tr><th>budget</th><th>best structured kind</th>"
        f"<th>gain over concat, points (95% CI)</th><th></th></tr>{rows}</table>"
        if rows
        else "<p>(concat or no structured kind was run: no gains over concat)</p>"
    )
    links = " · ".join(
        f'<a href="{html.escape(Path(r).parent.name)}/report.html">{int(b):,}</a>' for b, r in s["reports"].items()
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>clipforge fusion: accuracy vs parameter budget</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}} figure{{display:inline-block;margin:.5em}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ddd;padding:3px 7px;font-size:13px}} th{{background:#f3f3f3}}
td small{{color:#666}}</style></head><body>
<h1>Fusion kinds at several parameter budgets</h1>
<p>{s["train_pairs"]:,} training pairs, {s["val_pairs"]:,} held-out pairs; task {html.escape(s["task"])}
({", ".join(map(html.escape, s["labels"]))}). At each budget every kind but <code>late</code> got the largest
projection width within it; each point is {
        "one trained head"
        if s.get("seeds", 1) == 1
        else f"the mean of {s['seeds']} heads trained with different seeds (bars: their standard deviation)"
    }.
Per-budget reports: {links}.</p>
{"".join(figs)}
<h2>Best structured kind vs concat (an MLP of the same size)</h2>{verdicts}
<h2>Every head</h2>{sweep_table_html(s)}
</body></html>"""
    out = Path(path)
    out.write_text(page)
    return out
