"""`clipforge fuse compare`: every kind on the same cached features, one table, one HTML page.

Budgets: with `head.budget` > 0 every kind but `late` (2 parameters per output, nothing to widen) gets the
largest projection width whose parameter count stays within the budget, so a win cannot come from size.
Gains over `additive` (the lecture's test: does an interaction term matter?), over `late` (does a head beat the
cosine?) and, for the structured kinds, over `concat` (do they beat an MLP of the same size?) carry a paired
bootstrap interval over test examples.
"""

from __future__ import annotations

import shutil
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from clipforge.encoders.jsonfile import json_text
from clipforge.fusion.config import FuseConfig
from clipforge.fusion.features import PairSet
from clipforge.fusion.head import load_head
from clipforge.fusion.kinds import INTERACTION_KINDS, KINDS, STRUCTURED_KINDS, build_fusion, check_widths
from clipforge.fusion.metrics import GAIN_BASES, GROUP_METRICS, METRIC_NAMES, bootstrap_gain, correct_vector
from clipforge.fusion.train import (
    budget_kwargs,
    budget_width,
    encode_targets,
    label_names,
    load_sets,
    outputs,
    predict,
    train_head,
    with_kind,
)

# which rows carry a paired-bootstrap gain over which baseline (over additive also per group)
GAINED_OVER = {
    "late": tuple(k for k in KINDS if k != "late"),
    "additive": INTERACTION_KINDS,
    "concat": STRUCTURED_KINDS,
}


def parse_kinds(spec: str) -> list[str]:
    kinds = list(KINDS) if spec == "all" else list(dict.fromkeys(k.strip() for k in spec.split(",") if k.strip()))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"unknown fusion kind(s) {unknown} (known: {', '.join(KINDS)}, or 'all')")
    return kinds


def latency_us(head_dir: Path, dim: int, backend: str, batch: int, reps: int) -> float:
    """Median microseconds per prediction of `Head.predict` (numpy or torch), on a batch of `batch`."""
    head = load_head(head_dir, backend=backend)
    rng = np.random.default_rng(0)
    zi = rng.normal(size=(batch, dim)).astype(np.float32)
    zt = rng.normal(size=(batch, dim)).astype(np.float32)
    head.predict(zi, zt)  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        head.predict(zi, zt)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e6 / batch


def compare(
    cfg: FuseConfig,
    kinds: list[str],
    *,
    progress: bool = True,
    boot: int = 2000,
    seeds: int = 1,
    bar: Any = None,
    sets: tuple[PairSet, PairSet | None] | None = None,
) -> dict[str, Any]:
    """Every kind on the same cached features into OUT/<kind>/. seeds > 1: each kind is also trained with
    fit.seed + 1 .. + seeds-1 (OUT/<kind>/seeds/seed-N/); a row's metrics are then means over its seeds (with
    `accuracy_seeds` and `accuracy_sd`) and the gain intervals resample seeds as well as test examples.
    The curves, calibration, confusion and latency are those of the first seed's head. Progress: one bar over
    every head to train (rate and ETA), or `bar` (a tqdm the caller owns, e.g. across a sweep's budgets).
    `sets`: the (train, val) features already loaded for this config's data (a sweep reads them once)."""
    if boot < 1:
        raise ValueError(f"the number of bootstrap resamples must be at least 1, got {boot}")
    if seeds < 1:
        raise ValueError(f"the number of training seeds must be at least 1, got {seeds}")
    if not cfg.head.budget:  # each kind takes the configured widths: refuse a kind that cannot, before any work
        for kind in kinds:
            check_widths(kind, cfg.head.width, cfg.head.width_text)
    out = Path(cfg.out_dir)
    t0 = time.perf_counter()
    train, val = sets or load_sets(cfg, progress)
    if val is None:
        raise ValueError("fuse compare needs a held-out set: set data.val")
    if cfg.head.budget:
        check_budgets(cfg, kinds, [cfg.head.budget], train)
    out.mkdir(parents=True, exist_ok=True)
    feature_seconds = time.perf_counter() - t0
    labels = label_names(cfg, train)
    n_out = outputs(cfg.head.task, labels)
    y_val = encode_targets(val.labels, cfg.head.task, labels)
    rows: list[dict[str, Any]] = []
    runs: dict[str, Any] = {}
    correct: dict[str, np.ndarray] = {}
    with ExitStack() as stack:
        if bar is None:
            bar = stack.enter_context(
                tqdm(
                    total=len(kinds) * seeds, desc="fuse compare", unit="head", disable=not progress, dynamic_ncols=True
                )
            )
            stack.enter_context(logging_redirect_tqdm())  # a warning gets its own line above the bar
        for kind in kinds:
            row, runs[kind], correct[kind] = _compare_kind(cfg, kind, seeds, train, val, y_val, n_out, out, bar)
            rows.append(row)
    for base in [b for b in GAIN_BASES if b in correct]:
        for r in [r for r in rows if r["kind"] in GAINED_OVER[base]]:
            r[f"gain_vs_{base}"] = bootstrap_gain(correct[r["kind"]], correct[base], n_boot=boot)
            subsets = val.groups.items() if base == "additive" else []  # the lecture's test, per subset too
            for g, mask in subsets:
                if mask.any():
                    r[f"{g}/gain_vs_{base}"] = bootstrap_gain(
                        correct[r["kind"]][:, mask], correct[base][:, mask], n_boot=boot
                    )
    result = {
        "config": cfg.to_dict(),
        "seeds": seeds,
        "train_pairs": len(train),
        "val_pairs": len(val),
        "dim": train.dim,
        "labels": labels,
        "task": cfg.head.task,
        "feature_cache_hit": train.cache_hit and val.cache_hit,
        "feature_seconds": feature_seconds,
        "groups": {g: int(m.sum()) for g, m in val.groups.items()},
        "rows": rows,
        "history": {k: r["history"] for k, r in runs.items()},
        "reliability": {k: r["full_metrics"]["reliability"] for k, r in runs.items()},
        "confusion": {k: r["full_metrics"].get("confusion") for k, r in runs.items()},
    }
    (out / "compare.json").write_text(json_text(result, indent=2))
    (out / "compare.md").write_text(table_markdown(result) + "\n")
    from clipforge.fusion.report import write_compare_report

    result["report"] = str(write_compare_report(result, out / "report.html"))
    return result


def check_budgets(cfg: FuseConfig, kinds: list[str], budgets: list[int], train: PairSet) -> None:
    """Refuse a budget below some kind's smallest head (projection width 1), before any training: that kind
    would get more parameters than the budget, and the column would not compare equal sizes."""
    n_out = outputs(cfg.head.task, label_names(cfg, train))
    kw = budget_kwargs(cfg)
    smallest = {
        k: build_fusion(k, train.dim, n_out, **{**kw, "width": 1, "width_text": 0}).n_params()
        for k in kinds
        if k != "late"  # 2 parameters per output whatever the budget
    }
    over = {k: n for k, n in smallest.items() if n > budgets[0]}
    if over:
        k, n = max(over.items(), key=lambda kv: kv[1])
        raise ValueError(
            f"budget {budgets[0]:,} is below the smallest {k} head ({n:,} parameters at width 1): "
            f"the budget must be at least {max(smallest.values()):,}"
        )


def _compare_kind(
    cfg: FuseConfig,
    kind: str,
    seeds: int,
    train: Any,
    val: Any,
    y_val: np.ndarray,
    n_out: int,
    out: Path,
    bar: Any,
) -> tuple[dict[str, Any], dict[str, Any], np.ndarray]:
    """Train `kind` at each seed (its width the budget's): its table row, the first seed's run, and the
    per-example correctness of every seed [seeds, N] for the gains."""
    width = None
    if cfg.head.budget and kind != "late":
        kw = budget_kwargs(cfg)
        width = budget_width(kind, train.dim, n_out, cfg.head.budget, **kw)
    done: list[dict[str, Any]] = []  # each seed's run, the first first
    hits = []
    shutil.rmtree(out / kind / "seeds", ignore_errors=True)  # an earlier run's extra seeds are not this run's
    for j in range(seeds):
        seed = cfg.fit.seed + j
        c = with_kind(cfg, kind, out / kind if j == 0 else out / kind / "seeds" / f"seed-{seed}", width)
        bar.set_postfix_str(f"{kind}{f' ≤{cfg.head.budget:,}' if cfg.head.budget else ''} seed {seed}")  # training now
        run = train_head(replace(c, fit=replace(c.fit, seed=seed)), sets=(train, val), progress=False)
        bar.update(1)
        hits.append(correct_vector(predict(run.pop("module"), val, cfg.head.task), y_val, cfg.head.task))
        done.append(run)
    run, metrics = done[0], [r["full_metrics"] for r in done]
    head_dir = Path(run["head"])
    row = {
        "kind": kind,
        "width": width if width is not None else (0 if kind == "late" else cfg.head.width),
        "params": run["n_params"],
        **{key: _mean(metrics, key) for key in GROUP_METRICS},
        "ece": float(np.mean([x["reliability"]["ece"] for x in metrics])),
        **{f"{g}/{m}": _mean(metrics, f"{g}/{m}") for g in val.groups for m in GROUP_METRICS},
        "train_s": run["train_seconds"],
        "pairs_per_s": run["pairs_per_s"],
        "us_numpy_1": latency_us(head_dir, train.dim, "numpy", 1, 300),
        "us_torch_1": latency_us(head_dir, train.dim, "torch", 1, 300),
        "us_numpy_1024": latency_us(head_dir, train.dim, "numpy", 1024, 30),
        "us_torch_1024": latency_us(head_dir, train.dim, "torch", 1024, 30),
    }
    if seeds > 1:
        accs = [x["accuracy"] for x in metrics]
        row |= {"seeds": seeds, "accuracy_seeds": accs, "accuracy_sd": float(np.std(accs, ddof=1))}
    return row, run, np.stack(hits)


def _mean(metrics: list[dict[str, Any]], key: str) -> float | None:
    """A metric's mean over a kind's seeds (None where the metric is absent, e.g. an empty subset)."""
    values = [m.get(key) for m in metrics]
    return None if any(v is None for v in values) else float(np.mean([float(v) for v in values if v is not None]))


def pct(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.1f}"


def ci_text(g: dict[str, float] | None) -> str:
    return "" if not g else f"{100 * g['gain']:+.1f} [{100 * g['lo']:+.1f}, {100 * g['hi']:+.1f}]"


def table_markdown(result: dict[str, Any]) -> str:
    groups = list(result["groups"])
    seeds = result.get("seeds", 1)
    acc = "acc %" if seeds == 1 else f"acc % (mean ± sd, {seeds} seeds)"
    head = ["kind", "width", "params", acc, METRIC_NAMES["auroc"], METRIC_NAMES["macro_f1"], "ECE %"]
    head += [f"{g} {METRIC_NAMES[m]}" for g in groups for m in GROUP_METRICS]
    head += [f"gain vs {b} (95% CI)" for b in GAIN_BASES]
    head += [f"{g} gain vs additive (95% CI)" for g in groups] + [
        "train s",
        "pairs/s",
        "µs/pred (numpy, N=1)",
        "µs/pred (torch, N=1)",
        "µs/pred (numpy, N=1024)",
        "µs/pred (torch, N=1024)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        cells = [
            r["kind"],
            str(r["width"]),
            str(r["params"]),
            pct(r["accuracy"]) + (f" ± {100 * r['accuracy_sd']:.1f}" if "accuracy_sd" in r else ""),
            pct(r["auroc"]),
            pct(r["macro_f1"]),
            pct(r["ece"]),
        ]
        cells += [pct(r.get(f"{g}/{m}")) for g in groups for m in GROUP_METRICS]
        cells += [ci_text(r.get(f"gain_vs_{b}")) for b in GAIN_BASES]
        cells += [ci_text(r.get(f"{g}/gain_vs_additive")) for g in groups]
        cells += [
            f"{r['train_s']:.2f}",
            f"{r['pairs_per_s']:,.0f}",
            f"{r['us_numpy_1']:.1f}",
            f"{r['us_torch_1']:.1f}",
            f"{r['us_numpy_1024']:.2f}",
            f"{r['us_torch_1024']:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
