"""Fusion heads on the synthetic question set: every kind at one parameter budget, and the targets.

    python benchmarks/fusion_bench.py --bundle runs/quickstart/bundle --data data/synth

Trains all seven kinds on the same cached features of the main job's bundle (`fuse compare` with the
synth-questions preset), prints the comparison table, then each target as measured figures:
  - best interaction kind >= late + 15 accuracy points, and above additive and concat at equal budget
    (each kind but late gets the largest projection width within head.budget parameters);
  - accuracy on held-out colour+shape combinations (never seen by the bundle nor the heads);
  - head training on cached features >= 20,000 pairs/s; and the torch intra-op thread count's effect on it;
  - microseconds per prediction of Head.predict in numpy vs torch.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="runs/quickstart/bundle")
    p.add_argument("--data", default="data/synth", help="synth folder; questions/ is written there if missing")
    p.add_argument("--out", default=None, help="where the compare run goes (default: a temporary folder)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    a = p.parse_args()

    import torch

    from clipforge.fusion.compare import compare, table_markdown
    from clipforge.fusion.config import load_fuse_config
    from clipforge.fusion.kinds import INTERACTION_KINDS, build_fusion
    from clipforge.fusion.train import fit, load_sets

    q = Path(a.data) / "questions"
    if not (q / "questions.json").is_file():
        from clipforge.training.synth import write_questions

        write_questions(q)
    out = Path(a.out or tempfile.mkdtemp(prefix="fusion-bench-"))
    cfg = load_fuse_config(
        "synth-questions",
        [
            f"out_dir={out}",
            f"data.bundle={a.bundle}",
            f"data.train={q / 'train.jsonl'}",
            f"data.val={q / 'test.jsonl'}",
            f"data.cache_dir={out / 'cache'}",
            *a.set,
        ],
    )
    t0 = time.perf_counter()
    result = compare(
        cfg, ["late", "additive", "concat", "multiplicative", "tensor", "lowrank", "gated"], progress=False
    )
    print(
        f"{result['train_pairs']:,} training pairs, {result['val_pairs']:,} test pairs "
        f"({result['groups'].get('heldout', 0):,} touch a held-out colour+shape combination); bundle features "
        f"computed once in {result['feature_seconds']:.1f} s; budget {cfg.head.budget:,} parameters; "
        f"all kinds in {time.perf_counter() - t0:.0f} s\n"
    )
    print(table_markdown(result))
    rows = {r["kind"]: r for r in result["rows"]}
    best = max((rows[k] for k in INTERACTION_KINDS if k in rows and k != "concat"), key=lambda r: r["accuracy"])
    late, add, cat = rows["late"], rows["additive"], rows["concat"]
    gap = 100 * (best["accuracy"] - late["accuracy"])
    print(
        f"\nbest interaction kind: {best['kind']} {100 * best['accuracy']:.1f}% "
        f"(held-out combinations {100 * best['heldout/accuracy']:.1f}%)"
    )
    print(
        f"  vs late      {100 * late['accuracy']:.1f}%: {gap:+.1f} points (target >= +15: {'met' if gap >= 15 else 'NOT met'})"
    )
    for name, r in (("additive", add), ("concat", cat)):
        d = 100 * (best["accuracy"] - r["accuracy"])
        print(
            f"  vs {name:<9}{100 * r['accuracy']:.1f}% ({r['params']:,} params vs {best['params']:,}): {d:+.1f} points "
            f"({'above' if d > 0 else 'NOT above'})"
        )
    print(f"  train accuracy ceiling: see metrics.jsonl under {out}")
    rates = sorted(r["pairs_per_s"] for k, r in rows.items() if k != "late")
    print(
        f"\ntraining on cached features: {rates[0]:,.0f} .. {rates[-1]:,.0f} pairs/s across kinds "
        f"(slowest {min(rows.values(), key=lambda r: r['pairs_per_s'] if r['kind'] != 'late' else 1e18)['kind']}; "
        f"target >= 20,000: {'met' if rates[0] >= 20_000 else 'NOT met'})"
    )
    train, _ = load_sets(cfg, progress=False)
    for threads in (1, 2, 1, 2):  # alternating: the machine is shared
        c = load_fuse_config("synth-questions", [f"fit.threads={threads}", "fit.epochs=3"])
        r = fit(build_fusion("multiplicative", train.dim, 1, width=16), train, None, c, ["no", "yes"], progress=False)
        print(f"  multiplicative, torch threads={threads}: {r['pairs_per_s']:,.0f} pairs/s")
    torch.set_num_threads(torch.get_num_threads())
    print("\naccuracy by kind of question (test set): where the errors are")
    import json

    import numpy as np

    from clipforge.fusion.head import load_head

    _, test = load_sets(cfg, progress=False)
    table = [json.loads(line) for line in (q / "test.jsonl").read_text().splitlines() if line.strip()]
    assert len(table) == len(test), "an image did not decode: rows and pairs no longer line up"
    kind_of = np.array([r["negative"] or "yes (match)" for r in table])
    truth = np.array([r["label"] == "yes" for r in table])
    zi, zt = test.pairs()
    names = ["yes (match)", "colour_only", "shape_only", "neither"]
    print("  " + " " * 15 + "".join(f"{n:>13}" for n in names))
    for k in ("late", "additive", "concat", best["kind"]):
        pred = load_head(out / k / "head").predict(zi, zt)[:, 1] >= 0.5
        print(f"  {k:<15}" + "".join(f"{100 * (pred == truth)[kind_of == n].mean():12.1f}%" for n in names))
    print("\nµs per prediction (median; Head.predict incl. input checks and probabilities):")
    for k, r in rows.items():
        print(
            f"  {k:<15} N=1: numpy {r['us_numpy_1']:6.1f}  torch {r['us_torch_1']:6.1f}   "
            f"N=1024: numpy {r['us_numpy_1024']:5.2f}  torch {r['us_torch_1024']:5.2f}"
        )
    print(f"\nreport: {result['report']}")


if __name__ == "__main__":
    main()
