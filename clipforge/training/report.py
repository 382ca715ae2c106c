"""`clipforge report RUN_DIR`: one self-contained HTML page (PNG plots inlined) that explains a run.

Every plot's <img> carries the exact series it draws in `data-series` (JSON), taken from metrics.jsonl,
so a reader (or a test) can check the picture against the numbers.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of metrics.jsonl; a torn last line (a killed run) is ignored, a record of another shape is an
    error that names its line."""
    out = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the line a killed run was writing
                continue
            raise ValueError(f"{path} line {number} is not JSON") from None
        step = record.get("step") if isinstance(record, dict) else None
        sections_ok = isinstance(record, dict) and all(isinstance(record.get(k, {}), dict) for k in ("eval", "skipped"))
        if not (isinstance(step, int) and not isinstance(step, bool) and sections_ok):
            raise ValueError(f"{path} line {number} is not a metrics record (an object with an integer step)")
        out.append(record)
    if not out:
        raise ValueError(f"{path} holds no metrics records")
    return out


def read_config(path: Path) -> dict[str, Any]:
    """The run's resolved config.yaml as a dict ({} without one)."""
    if not path.is_file():
        return {}
    import yaml

    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exn:
        raise ValueError(f"{path} is not valid YAML ({' '.join(str(exn).split())})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("data", {}), dict):
        raise ValueError(f"{path} is not a clipforge config (a mapping with sections like data:)")
    return cfg


def finite_or_none(values: list[float]) -> list[float | None]:
    """For the data-series JSON: NaN and infinities are not JSON; null is, and the plot shows a gap there."""
    return [v if math.isfinite(v) else None for v in values]


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def line_plot(title: str, series: dict[str, tuple[list[int], list[float]]], ylabel: str = "") -> str:
    fig, ax = plt.subplots(figsize=(5.2, 3.0))
    for name, (xs, ys) in series.items():  # a non-finite value is drawn as a gap (NaN breaks a matplotlib line)
        drawn = [v if math.isfinite(v) else math.nan for v in ys]
        ax.plot(xs, drawn, marker="o" if len(xs) < 30 else None, markersize=3, label=name)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=7)
    data = {name: {"step": xs, "value": finite_or_none(ys)} for name, (xs, ys) in series.items()}
    return (
        f'<figure><img alt="{html.escape(title)}" data-title="{html.escape(title)}" '
        f"data-series='{html.escape(json.dumps(data, allow_nan=False))}' "
        f'src="data:image/png;base64,{_png(fig)}"></figure>'
    )


def confusion_plot(names: list[str], matrix: list[list[int]]) -> str:
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_yticks(range(len(names)), names, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("zero-shot confusion (final)")
    return (
        f'<figure><img alt="confusion matrix" data-title="confusion" data-series=\'{html.escape(json.dumps(matrix))}\' '
        f'src="data:image/png;base64,{_png(fig)}"></figure>'
    )


def series(records: list[dict[str, Any]], key: str, evals: bool = False) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in records:
        src = r.get("eval", {}) if evals else r
        if key in src and isinstance(src[key], int | float):
            xs.append(int(r["step"]))
            ys.append(float(src[key]))
    return xs, ys


def retrieval_examples(run: Path, cfg: dict[str, Any], n_queries: int = 4, k: int = 4) -> str:
    """Held-out captions -> the top-k held-out images under the run's bundle."""
    val = cfg.get("data", {}).get("val")
    if not val or not (run / "bundle" / "bundle.json").is_file():
        return "<p>No held-out shards or bundle: no retrieval examples.</p>"
    from clipforge.data.shards import iter_pairs
    from clipforge.encoders.bundle import load_bundle

    bundle = load_bundle(run / "bundle", device="cpu")
    pairs = list(iter_pairs(val, caption_key=cfg["data"].get("caption_key", "txt"), limit=200))
    if not pairs:
        return "<p>No usable held-out pairs.</p>"
    img = bundle.encode_images(bundle.preprocess([p[0] for p in pairs]))
    queries = [pairs[i][1] for i in range(0, len(pairs), max(1, len(pairs) // n_queries))][:n_queries]
    sims = bundle.encode_texts(queries) @ img.T  # [Q, N]
    rows = []
    for q, row in zip(queries, sims, strict=True):
        cells = []
        for score, idx in zip(*row.topk(k), strict=True):
            buf = io.BytesIO()
            pairs[int(idx)][0].resize((96, 96)).save(buf, format="PNG")
            b64 = base64.b64encode(buf.getvalue()).decode()
            cap = html.escape(pairs[int(idx)][1])
            cells.append(f'<td><img src="data:image/png;base64,{b64}" title="{cap}"><br>{float(score):.3f}</td>')
        rows.append(f"<tr><th>{html.escape(q)}</th>{''.join(cells)}</tr>")
    return f"<table class='examples'>{''.join(rows)}</table>"


PLOTS = [
    ("loss", ["loss"], False),
    ("logit scale (1 / temperature)", ["logit_scale"], False),
    ("learning rate", ["lr"], False),
    ("samples/s", ["samples_per_s"], False),
    ("zero-shot accuracy", ["zeroshot_top1", "zeroshot_top5", "zeroshot_top1_heldout"], True),
    ("retrieval recall", ["image_to_text_R@1", "image_to_text_R@5", "text_to_image_R@1", "text_to_image_R@5"], True),
    ("InfoNCE bound on mutual information (nats)", ["diag_mi_lower_bound"], True),
    ("alignment and uniformity", ["diag_alignment", "diag_uniformity_image", "diag_uniformity_text"], True),
    ("modality gap", ["diag_modality_gap"], True),
    ("canonical correlations (mean of top 10)", ["diag_cca_mean_top10"], True),
    ("cosine: positive pairs vs negatives", ["diag_cosine_positive", "diag_cosine_negative"], True),
]


def write_report(run_dir: str | Path, out: str | Path | None = None, examples: bool = True) -> Path:
    run = Path(run_dir)
    metrics_path = run / "metrics.jsonl"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{run} has no metrics.jsonl: is it a training run directory?")
    records = read_metrics(metrics_path)
    cfg = read_config(run / "config.yaml")
    figures = []
    for title, keys, evals in PLOTS:
        data = {k: series(records, k, evals) for k in keys}
        data = {k: v for k, v in data.items() if v[0]}
        if data:
            figures.append(line_plot(title, data))
    skipped_keys = sorted({k for r in records for k in r.get("skipped", {})})
    if skipped_keys:
        figures.append(
            line_plot(
                "skipped samples (cumulative)",
                {
                    k: (
                        [int(r["step"]) for r in records if "skipped" in r],
                        [float(r["skipped"].get(k, 0)) for r in records if "skipped" in r],
                    )
                    for k in skipped_keys
                },
            )
        )
    evals = [r for r in records if "eval" in r]
    final = evals[-1]["eval"] if evals else {}
    if "zeroshot_confusion" in final:
        figures.append(confusion_plot(final["zeroshot_classes"], final["zeroshot_confusion"]))
    summary_rows = "".join(
        f'<tr><td>{html.escape(k)}</td><td data-key="{html.escape(k)}">{v:.4f}</td></tr>'
        for k, v in final.items()
        if isinstance(v, float)
    )
    provenance = ""
    if (run / "bundle" / "bundle.json").is_file():
        meta = json.loads((run / "bundle" / "bundle.json").read_text())
        meta.get("provenance", {}).pop("config", None)
        provenance = html.escape(json.dumps(meta, indent=2))
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>clipforge report: {html.escape(run.name)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}} figure{{display:inline-block;margin:.5em}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ddd;padding:3px 8px;font-size:13px;text-align:left}}
pre{{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}}</style></head><body>
<h1>Training report: {html.escape(str(run))}</h1>
<p>{len([r for r in records if "loss" in r])} logged steps, {len(evals)} evaluations,
last step {records[-1]["step"] if records else 0}.</p>
<h2>Curves</h2>{"".join(figures)}
<h2>Final evaluation</h2><table id="final">{summary_rows}</table>
<h2>Retrieval examples (held-out caption &rarr; top images)</h2>{retrieval_examples(run, cfg) if examples else ""}
<h2>Resolved config</h2><pre>{html.escape(json.dumps(cfg, indent=2))}</pre>
<h2>Bundle and provenance</h2><pre>{provenance}</pre>
</body></html>"""
    out_path = Path(out) if out else run / "report.html"
    out_path.write_text(body)
    return out_path
