"""The `fuse compare` page: one self-contained HTML file (PNG plots inlined, like `clipforge report`).

Every plot's <img> carries the series it draws in `data-series` (JSON), so the picture can be checked
against the numbers in compare.json.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from clipforge.fusion.kinds import STRUCTURED_KINDS  # noqa: E402
from clipforge.fusion.metrics import GAIN_BASES, GROUP_METRICS, METRIC_NAMES  # noqa: E402


def best_structured(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The most accurate row of a structured interaction kind (multiplicative, tensor, lowrank, gated): the
    contender the targets hold against late, additive and concat. None when none of them was run."""
    structured = [r for r in rows if r["kind"] in STRUCTURED_KINDS]
    return max(structured, key=lambda r: r["accuracy"]) if structured else None


def png_figure(fig: Any, title: str, data: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    b64 = base64.b64encode(buf.getvalue()).decode()
    return (
        f'<figure><img alt="{html.escape(title)}" data-title="{html.escape(title)}" '
        f"data-series='{html.escape(json.dumps(data))}' src=\"data:image/png;base64,{b64}\"></figure>"
    )


def curves(history: dict[str, list[dict[str, Any]]], key: str, title: str, from_val: bool) -> str:
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    data = {}
    for kind, recs in history.items():
        points = [(r["epoch"], (r.get("val", {}) if from_val else r).get(key)) for r in recs]
        xs, ys = [x for x, y in points if y is not None], [float(y) for x, y in points if y is not None]
        if xs:
            ax.plot(xs, ys, label=kind, linewidth=1.5)
            data[kind] = {"epoch": xs, "value": ys}
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    if data:  # an empty chart has no legend to draw (matplotlib warns)
        ax.legend(fontsize=7)
    return png_figure(fig, title, data)


def reliability_plot(rel: dict[str, dict[str, Any]]) -> str:
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1, label="perfect calibration")
    data = {}
    for kind, r in rel.items():
        pts = [(c, a) for c, a in zip(r["confidence"], r["accuracy"], strict=True) if c is not None]
        if pts:
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker="o",
                markersize=3,
                linewidth=1,
                label=f"{kind} (ECE {100 * r['ece']:.1f}%)",
            )
        data[kind] = r
    ax.set_xlim(0.45 if all(c is None or c >= 0.45 for r in rel.values() for c in r["confidence"]) else 0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (predicted probability of the chosen answer)")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability diagram")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return png_figure(fig, "reliability", data)


def confusion_plot(kind: str, labels: list[str], matrix: list[list[int]]) -> str:
    n = len(labels)
    fig, ax = plt.subplots(figsize=(2.2 + 0.5 * n, 1.8 + 0.5 * n))
    ax.imshow(matrix, cmap="Blues")
    flat = [v for row in matrix for v in row]
    mid = (min(flat) + max(flat)) / 2  # the colour scale spans min..max: white text only on the dark half
    for i in range(n):
        for j in range(n):
            if n <= 12:
                ax.text(
                    j,
                    i,
                    str(matrix[i][j]),
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if matrix[i][j] > mid else "black",
                )
    ax.set_xticks(range(n), labels, rotation=90 if n > 4 else 0)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion: {kind}")
    return png_figure(fig, f"confusion {kind}", matrix)


def table_html(result: dict[str, Any]) -> str:
    groups = list(result["groups"])
    cols = [
        "kind",
        "width",
        "params",
        "accuracy",
        "auroc",
        "macro_f1",
        "ece",
        *[f"{g}/{m}" for g in groups for m in GROUP_METRICS],
        *[f"gain_vs_{b}" for b in GAIN_BASES],
        *[f"{g}/gain_vs_additive" for g in groups],
        "train_s",
        "pairs_per_s",
        "us_numpy_1",
        "us_torch_1",
        "us_numpy_1024",
        "us_torch_1024",
    ]
    names = {
        **METRIC_NAMES,
        "accuracy": "acc %" if result.get("seeds", 1) == 1 else f"acc % ({result['seeds']} seeds)",
        "ece": "ECE %",
        **{f"{g}/{m}": f"{g} {METRIC_NAMES[m]}" for g in groups for m in GROUP_METRICS},
        **{f"{g}/gain_vs_additive": f"{g} gain vs additive (95% CI)" for g in groups},
        **{f"gain_vs_{b}": f"gain vs {b} (95% CI)" for b in GAIN_BASES},
        "train_s": "train s",
        "pairs_per_s": "pairs/s",
        "us_numpy_1": "µs/pred numpy N=1",
        "us_torch_1": "µs/pred torch N=1",
        "us_numpy_1024": "µs/pred numpy N=1024",
        "us_torch_1024": "µs/pred torch N=1024",
    }
    best = max(result["rows"], key=lambda r: r["accuracy"])["kind"]

    def cell(r: dict[str, Any], c: str) -> str:
        v = r.get(c)
        if isinstance(v, dict):
            s = f"{100 * v['gain']:+.1f} [{100 * v['lo']:+.1f}, {100 * v['hi']:+.1f}]"
            cls = "good" if v["lo"] > 0 else ("bad" if v["hi"] < 0 else "")
            return f'<td class="{cls}" data-key="{c}">{s}</td>'
        if v is None:
            return f'<td data-key="{c}"></td>'
        if isinstance(v, float) and v != v:  # NaN: a metric undefined on this subset (one class only)
            return f'<td data-key="{c}">n/a</td>'
        if c == "accuracy" and "accuracy_sd" in r:
            return f'<td data-key="{c}" data-value="{v}">{100 * v:.1f} ± {100 * r["accuracy_sd"]:.1f}</td>'
        if c in ("accuracy", "auroc", "macro_f1", "ece") or c.split("/")[-1] in GROUP_METRICS:
            return f'<td data-key="{c}" data-value="{v}">{100 * v:.1f}</td>'
        if isinstance(v, float):
            return (
                f'<td data-key="{c}" data-value="{v}">{v:,.2f}</td>'
                if v < 1000
                else f'<td data-key="{c}">{v:,.0f}</td>'
            )
        return f'<td data-key="{c}">{html.escape(str(v))}</td>'

    head = "".join(f"<th>{html.escape(names.get(c, c))}</th>" for c in cols)
    body = "".join(
        f'<tr data-kind="{r["kind"]}"{" class=best" if r["kind"] == best else ""}>{"".join(cell(r, c) for c in cols)}</tr>'
        for r in result["rows"]
    )
    # a wide table (20 columns with subsets) scrolls inside its box, not the whole page
    return f'<div style="overflow-x:auto"><table id="compare"><tr>{head}</tr>{body}</table></div>'


def write_compare_report(result: dict[str, Any], path: str | Path) -> Path:
    rows = result["rows"]
    best = max(rows, key=lambda r: r["accuracy"])["kind"]
    contender = best_structured(rows)
    best_fused = contender["kind"] if contender else best
    figs = [
        curves(result["history"], "accuracy", "held-out accuracy per epoch", True),
        curves(result["history"], "loss", "training loss per epoch", False),
    ]
    for g in result["groups"]:
        figs.append(curves(result["history"], f"{g}/accuracy", f"{g} accuracy per epoch", True))
    shown = {k: v for k, v in result["reliability"].items() if k in (best, best_fused, "additive", "late", "concat")}
    figs.append(reliability_plot(shown))
    for kind in dict.fromkeys([best, best_fused, "additive"]):
        if result["confusion"].get(kind):
            figs.append(confusion_plot(kind, result["labels"], result["confusion"][kind]))
    cfg = result["config"]
    budget = cfg["head"]["budget"]
    note = (
        f"Every kind but <code>late</code> got the largest projection width within {budget:,} parameters."
        if budget
        else "Kinds use the configured width (no parameter budget)."
    )
    seeds = result.get("seeds", 1)
    if seeds > 1:
        note += (
            f" Each kind was trained with {seeds} seeds: metrics are means over them (accuracy ± its standard"
            " deviation), the gain intervals resample seeds as well as examples, and the curves, calibration and"
            " confusion below are the first seed's head."
        )
    groups = ", ".join(f"{g}: {n:,} pairs" for g, n in result["groups"].items())
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>clipforge fusion comparison</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1300px}} figure{{display:inline-block;margin:.5em}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ddd;padding:3px 7px;font-size:13px;text-align:right}}
th{{background:#f3f3f3}} td:first-child{{text-align:left;font-weight:600}} tr.best td{{background:#eef6ee}}
td.good{{color:#126b12;white-space:nowrap}} td.bad{{white-space:nowrap}} td.bad{{color:#a11}} pre{{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}}
p.note{{color:#555;font-size:14px;max-width:70em}}</style></head><body>
<h1>Fusion heads compared</h1>
<p>{result["train_pairs"]:,} training pairs, {result["val_pairs"]:,} held-out pairs ({groups}); task
{html.escape(result["task"])} ({", ".join(map(html.escape, result["labels"]))}); embedding width {result["dim"]};
bundle features {"from the cache" if result["feature_cache_hit"] else "computed"} in {result["feature_seconds"]:.1f} s.</p>
<p class="note">{note} Gains are accuracy points over <code>late</code>, <code>additive</code> and (for the structured
kinds) <code>concat</code>, with a paired bootstrap 95% interval over held-out examples (green: above, red: below, the
interval excluding 0); over <code>additive</code> on each subset too. µs/pred: median time of <code>Head.predict</code> per pair on a batch
of 1 and of 1024, in numpy and in torch.</p>
{table_html(result)}
<h2>Learning curves, calibration, confusion</h2>{"".join(figs)}
<h2>Config</h2><pre>{html.escape(json.dumps(cfg, indent=2))}</pre>
</body></html>"""
    out = Path(path)
    out.write_text(body)
    return out
