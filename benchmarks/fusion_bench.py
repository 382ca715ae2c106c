"""Fusion heads on the synthetic question sets: every kind at equal parameter budgets, and the targets.

    python benchmarks/fusion_bench.py --bundle runs/quickstart/bundle --data data/synth [--task yes-no]
        [--budgets 600,1200,2400,4800,9600]

Three tasks (`clipforge data synth` writes them under questions/): two on the same one-shape images,
named as the main job serves their heads (`QUICKSTART_TASKS` in clipforge/fusion/quickstart.py), and one on
two-shape scenes:
  yes-no         "is there a red circle?"           (preset synth-questions)
  yes-no-absent  "is the circle red?": yes, no (the circle is another colour), absent (no circle)
                                                    (preset synth-questions-3way)
  binding        "is there a red circle?" about a red square beside a blue circle: the swaps are "no"
                                                    (preset synth-questions-binding)
For each, trains all seven kinds on the same cached features of the main job's bundle (`fuse compare`),
prints the comparison table, then each target as measured figures:
  - best interaction kind >= late + 15 accuracy points, and above additive and concat at equal budget
    (each kind but late gets the largest projection width within head.budget parameters), with paired
    bootstrap intervals;
  - the same comparison at several budgets (`fuse compare --budgets`): accuracy against parameters per kind,
    and the best structured kind's gain over concat at each, since "above concat" can hold at one size only;
  - accuracy on held-out colour+shape combinations (never seen by the bundle nor the heads);
  - accuracy by how the question relates to the image (where the errors are);
  - head training on cached features >= 20,000 pairs/s; and the torch intra-op thread count's effect on it;
  - microseconds per prediction of Head.predict in numpy vs torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipforge.cliutil import at_least  # noqa: E402
from clipforge.fusion.quickstart import QUICKSTART_TASKS  # noqa: E402
from clipforge.fusion.sweep import parse_budgets  # noqa: E402

# what of the question the image matches, in the order the breakdown prints them (binding: "swapped")
RELATIONS = ("match", "swapped", "shape_only", "colour_only", "neither")
# the main job's two tasks, named as it serves their heads, and the binding task (two shapes per scene)
TASKS = {
    **QUICKSTART_TASKS,
    "binding": ("synth-questions-binding", "binding-train.jsonl", "binding-test.jsonl", "is there a red circle?"),
}


def relation(row: dict) -> str:
    return row.get("relation") or row.get("negative") or "match"  # yes/no rows name only their misses


def run_task(task: str, q: Path, out: Path, bundle: str, overrides: list[str], budgets: list[int], seeds: int) -> dict:
    from clipforge.fusion.compare import compare, table_markdown
    from clipforge.fusion.config import load_fuse_config
    from clipforge.fusion.head import load_head
    from clipforge.fusion.report import best_structured
    from clipforge.fusion.sweep import sweep, sweep_markdown, verdict
    from clipforge.fusion.train import load_sets

    preset, train_file, test_file, _ = TASKS[task]
    cfg = load_fuse_config(
        preset,
        [
            f"out_dir={out}",
            f"data.bundle={bundle}",
            f"data.train={q / train_file}",
            f"data.val={q / test_file}",
            f"data.cache_dir={out.parent / 'cache'}",
            *overrides,
        ],
    )
    kinds = ["late", "additive", "concat", "multiplicative", "tensor", "lowrank", "gated"]
    t0 = time.perf_counter()
    swept = None
    if budgets:  # the preset's budget is one of them: its compare is the main table
        swept = sweep(cfg, kinds, sorted({*budgets, cfg.head.budget}), progress=False, seeds=seeds)
        result = swept["results"][cfg.head.budget]
        out = out / f"budget-{cfg.head.budget}"
    else:
        result = compare(cfg, kinds, progress=False, seeds=seeds)
    print(f"\n## {task} ({preset}): answers {', '.join(result['labels'])}\n")
    where = f" at {len(swept['budgets'])} budgets" if swept else ""
    print(
        f"{result['train_pairs']:,} training pairs, {result['val_pairs']:,} test pairs "
        f"({result['groups'].get('heldout', 0):,} touch a held-out colour+shape combination); bundle features "
        f"in {result['feature_seconds']:.1f} s; budget {cfg.head.budget:,} parameters; "
        f"all kinds{where} in {time.perf_counter() - t0:.0f} s\n"
    )
    print(table_markdown(result))
    rows = {r["kind"]: r for r in result["rows"]}
    best = best_structured(result["rows"])
    assert best is not None
    late, add, cat = rows["late"], rows["additive"], rows["concat"]

    def ci(g: dict) -> str:
        return f"95% CI [{100 * g['lo']:+.1f}, {100 * g['hi']:+.1f}]"  # the bench's lines put the gain first

    gap = 100 * (best["accuracy"] - late["accuracy"])
    print(
        f"\nbest interaction kind: {best['kind']} {100 * best['accuracy']:.1f}% "
        f"(held-out combinations {100 * best['heldout/accuracy']:.1f}%)"
    )
    print(
        f"  vs late     {100 * late['accuracy']:.1f}%: {gap:+.1f} points, {ci(best['gain_vs_late'])} "
        f"(target >= +15: {'met' if gap >= 15 else 'NOT met'})"
    )
    for name, r in (("additive", add), ("concat", cat)):
        g = best[f"gain_vs_{name}"]
        print(
            f"  vs {name:<9}{100 * r['accuracy']:.1f}% ({r['params']:,} params vs {best['params']:,}): "
            f"{100 * g['gain']:+.1f} points, {ci(g)}: {verdict(g)}"
        )
    first = " (the first seed's heads)" if seeds > 1 else ""
    print(f"\naccuracy by how the question relates to the image (test set): where the errors are{first}")
    _, test = load_sets(cfg, progress=False)
    table = [json.loads(line) for line in (q / test_file).read_text().splitlines() if line.strip()]
    assert len(table) == len(test), "an image did not decode: rows and pairs no longer line up"
    rel = np.array([relation(r) for r in table])
    truth = np.array([r["label"] for r in table])
    zi, zt = test.pairs()
    present = [n for n in RELATIONS if (rel == n).any()]
    print("  " + " " * 15 + "".join(f"{n:>13}" for n in present))
    for k in dict.fromkeys(("late", "additive", "concat", best["kind"])):
        head = load_head(out / k / "head")
        pred = np.array(head.labels)[head.predict(zi, zt).argmax(1)]
        print(f"  {k:<15}" + "".join(f"{100 * (pred == truth)[rel == n].mean():12.1f}%" for n in present))
    print(f"report: {result['report']}")
    if swept is not None:
        print(f"\nthe same kinds at {len(swept['budgets'])} parameter budgets (test accuracy %, parameters used):\n")
        print(sweep_markdown(swept))
        print("\nbest structured kind vs concat at each budget:")
        for v in swept["best_vs_concat"]:
            print(f"  <= {v['budget']:>6,} params: {v['kind']:<15}{ci(v)} ({100 * v['gain']:+.1f}): {verdict(v)}")
        print(f"page: {swept['report']}")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="runs/quickstart/bundle")
    p.add_argument("--data", default="data/synth", help="synth folder; questions/ is written there if missing")
    p.add_argument("--out", default=None, help="where the compare runs go (default: a temporary folder)")
    p.add_argument("--task", choices=[*TASKS, "all"], default="all")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument(
        "--budgets",
        default="600,1200,2400,4800,9600",
        help="also compare at these parameter budgets (accuracy vs parameters per kind); '' for the preset's only",
    )
    p.add_argument(
        "--seeds", type=at_least(1), default=1, help="train each kind with this many seeds (means, sd, intervals)"
    )
    a = p.parse_args()
    try:
        budgets = parse_budgets(a.budgets) if a.budgets else []  # refused before anything is written
    except ValueError as exn:
        p.error(str(exn))

    import torch

    from clipforge.fusion.config import load_fuse_config
    from clipforge.fusion.kinds import build_fusion
    from clipforge.fusion.train import fit, load_sets
    from clipforge.training.synth import ensure_questions

    q = Path(a.data) / "questions"
    ensure_questions(q)  # written if missing; an older set gets the tasks it lacks added
    out = Path(a.out or tempfile.mkdtemp(prefix="fusion-bench-"))
    results = {
        task: run_task(task, q, out / task, a.bundle, a.set, budgets, a.seeds)
        for task in (TASKS if a.task == "all" else [a.task])
    }
    rates = sorted(
        (r["pairs_per_s"], r["kind"]) for res in results.values() for r in res["rows"] if r["kind"] != "late"
    )
    print(
        f"\ntraining on cached features: {rates[0][0]:,.0f} .. {rates[-1][0]:,.0f} pairs/s across kinds and tasks "
        f"(slowest {rates[0][1]}; target >= 20,000: {'met' if rates[0][0] >= 20_000 else 'NOT met'})"
    )
    # the thread-count check on the yes/no task's cached training features (the first task wrote them)
    yes_no = [f"data.bundle={a.bundle}", f"data.train={q / 'train.jsonl'}", f"data.cache_dir={out / 'cache'}"]
    train, _ = load_sets(load_fuse_config("synth-questions", [*yes_no, "data.val=''"]), progress=False)
    for threads in (1, 2, 1, 2):  # alternating: the machine is shared
        c = load_fuse_config("synth-questions", [f"fit.threads={threads}", "fit.epochs=3"])
        r = fit(build_fusion("multiplicative", train.dim, 1, width=16), train, None, c, ["no", "yes"], progress=False)
        print(f"  multiplicative, torch threads={threads}: {r['pairs_per_s']:,.0f} pairs/s")
    torch.set_num_threads(torch.get_num_threads())
    print("\nµs per prediction (median; Head.predict incl. input checks and probabilities):")
    for task, res in results.items():
        print(f"  {task}")
        for r in res["rows"]:
            print(
                f"    {r['kind']:<15} N=1: numpy {r['us_numpy_1']:6.1f}  torch {r['us_torch_1']:6.1f}   "
                f"N=1024: numpy {r['us_numpy_1024']:5.2f}  torch {r['us_torch_1024']:5.2f}"
            )


if __name__ == "__main__":
    main()
