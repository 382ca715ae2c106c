"""Does tuning each kind's own learning rate and weight decay change which fusion kind wins?

    python benchmarks/fusion_tuning.py --bundle runs/quickstart/bundle --data data/synth [--task yes-no-absent]
        [--kinds concat,multiplicative,tensor,lowrank,gated] [--budget 4800] [--seeds 3]

`fuse compare` trains every kind with the preset's one learning rate and weight decay. A fair comparison
gives each method the same tuning effort: a kind that one shared setting happens to suit would otherwise win
on optimisation, not on its fusion. This probe tunes every kind alike and reports whether the verdict moves:

  1. a validation split is carved from the TRAINING table, by image (15% of the images and all their
     questions; the test table is never looked at while choosing);
  2. per kind and training seed, every (lr, weight decay) of the grid trains on the rest and is scored on that
     split; the best is kept (ties: the first in grid order);
  3. the chosen setting retrains on the whole training table and is evaluated on the test table, beside the
     preset's own setting.

Each kind takes the largest projection width within the budget, as in `fuse compare`. Prints per kind: the
test accuracy with the preset's setting and with its tuned one (mean ± sd over seeds), the settings chosen,
and the best structured kind's gain over concat for both, with paired bootstrap intervals that resample
seeds and test questions (`clipforge.fusion.metrics.bootstrap_gain`, as `fuse compare --seeds` does).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fusion_bench import TASKS  # noqa: E402

LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
WEIGHT_DECAYS = (1e-4, 1e-2, 1e-1)
VAL_SHARE = 0.15  # of the training images (with all their questions) held out to choose the setting


def split_by_image(train, share: float, seed: int):  # noqa: ANN001, ANN201 (PairSet in, two PairSets out)
    """(fit part, validation part) of a PairSet: every question about an image lands on one side only."""
    from clipforge.fusion.features import PairSet

    images = np.unique(train.image_idx)
    held = np.random.default_rng(seed).choice(images, size=max(1, round(len(images) * share)), replace=False)
    mask = np.isin(train.image_idx, held)

    def part(m: np.ndarray) -> PairSet:
        return replace(
            train,
            image_idx=train.image_idx[m],
            text_idx=train.text_idx[m],
            labels=[v for v, keep in zip(train.labels, m, strict=True) if keep],
            groups={g: v[m] for g, v in train.groups.items()},
        )

    return part(~mask), part(mask)


def correct(kind: str, width: int, cfg, labels: list[str], fit_on, test) -> np.ndarray:  # noqa: ANN001
    """Per-question correctness on `test` of one head of `kind` trained on `fit_on` with `cfg.fit`."""
    import torch

    from clipforge.fusion.kinds import build_fusion
    from clipforge.fusion.metrics import correct_vector
    from clipforge.fusion.train import budget_kwargs, encode_targets, fit, outputs, predict

    torch.manual_seed(cfg.fit.seed)  # as `fuse train`: the initial weights come from the seed too
    module = build_fusion(kind, fit_on.dim, outputs(cfg.head.task, labels), **budget_kwargs(cfg), width=width)
    fit(module, fit_on, None, cfg, labels, progress=False)
    y = encode_targets(test.labels, cfg.head.task, labels)
    return correct_vector(predict(module, test, cfg.head.task), y, cfg.head.task)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True, help="the main job's runs/quickstart/bundle")
    ap.add_argument("--data", required=True, help="the synthetic set's folder (clipforge data synth)")
    ap.add_argument("--task", choices=sorted(TASKS), default="yes-no-absent")
    ap.add_argument("--kinds", default="concat,multiplicative,tensor,lowrank,gated")
    ap.add_argument("--budget", type=int, default=0, help="parameters per head (default: the preset's)")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    if args.seeds < 1:
        raise SystemExit("--seeds must be at least 1")

    from clipforge.fusion.compare import parse_kinds
    from clipforge.fusion.config import load_fuse_config
    from clipforge.fusion.kinds import STRUCTURED_KINDS, build_fusion
    from clipforge.fusion.metrics import bootstrap_gain
    from clipforge.fusion.train import budget_kwargs, budget_width, label_names, load_sets, outputs
    from clipforge.training.synth import ensure_questions

    kinds = parse_kinds(args.kinds)
    if "concat" not in kinds or not set(kinds) & set(STRUCTURED_KINDS):
        raise SystemExit("--kinds: give concat and at least one structured kind (the question is which wins)")
    preset, train_file, test_file, example = TASKS[args.task]
    q = Path(args.data) / "questions"
    ensure_questions(q)
    cfg = load_fuse_config(
        preset, [f"data.bundle={args.bundle}", f"data.train={q / train_file}", f"data.val={q / test_file}"]
    )
    budget = args.budget or cfg.head.budget
    train, test = load_sets(cfg, progress=False)
    assert test is not None
    labels = label_names(cfg, train)
    fit_on, val = split_by_image(train, VAL_SHARE, seed=cfg.fit.seed)
    grid = list(itertools.product(LRS, WEIGHT_DECAYS))
    print(
        f"task {args.task} ({example!r}), bundle {args.bundle}, budget {budget:,}, {args.seeds} seed(s); "
        f"{len(fit_on):,} + {len(val):,} (validation) training pairs, {len(test):,} test pairs; "
        f"grid lr {LRS} x weight decay {WEIGHT_DECAYS}; preset: lr {cfg.fit.lr:g}, wd {cfg.fit.weight_decay:g}"
    )
    t0 = time.perf_counter()
    preset_c: dict[str, np.ndarray] = {}
    tuned_c: dict[str, np.ndarray] = {}
    print("\n| kind | params | preset's setting: test acc | tuned: test acc | settings chosen (lr, wd) per seed |")
    print("| --- | --- | --- | --- | --- |")
    for kind in kinds:
        width = budget_width(kind, train.dim, outputs(cfg.head.task, labels), budget, **budget_kwargs(cfg))
        rows_preset, rows_tuned, picks = [], [], []
        for s in range(args.seeds):
            seeded = replace(cfg, fit=replace(cfg.fit, seed=cfg.fit.seed + s))
            scores = []
            for lr, wd in grid:
                trial = replace(seeded, fit=replace(seeded.fit, lr=lr, weight_decay=wd))
                try:
                    scores.append(correct(kind, width, trial, labels, fit_on, val).mean())
                except RuntimeError:  # the loss diverged at this learning rate: a setting not to choose
                    scores.append(-np.inf)
            lr, wd = grid[int(np.argmax(scores))]
            picks.append(f"{lr:g}, {wd:g}")
            chosen = replace(seeded, fit=replace(seeded.fit, lr=lr, weight_decay=wd))
            rows_tuned.append(correct(kind, width, chosen, labels, train, test))
            rows_preset.append(correct(kind, width, seeded, labels, train, test))
        preset_c[kind], tuned_c[kind] = np.array(rows_preset), np.array(rows_tuned)
        n_params = build_fusion(
            kind, train.dim, outputs(cfg.head.task, labels), **budget_kwargs(cfg), width=width
        ).n_params()
        print(
            f"| {kind} | {n_params:,} | {_acc(preset_c[kind])} | {_acc(tuned_c[kind])} | {'; '.join(picks)} |",
            flush=True,
        )
    print(f"\n{len(kinds)} kinds x {args.seeds} seed(s) x {len(grid) + 2} heads in {time.perf_counter() - t0:.0f} s")
    structured = [k for k in kinds if k in STRUCTURED_KINDS]
    for name, table in (("preset's setting", preset_c), ("tuned per kind", tuned_c)):
        best = max(structured, key=lambda k: table[k].mean())
        g = bootstrap_gain(table[best], table["concat"])
        print(
            f"{name:>16}: best structured {best} {100 * table[best].mean():.1f} vs concat "
            f"{100 * table['concat'].mean():.1f}: {100 * g['gain']:+.1f} points, "
            f"95% CI [{100 * g['lo']:+.1f}, {100 * g['hi']:+.1f}]"
        )


def _acc(c: np.ndarray) -> str:
    """Mean ± sd (over seeds) of a [seeds, N] correctness matrix, in %."""
    per_seed = 100 * c.mean(1)
    sd = per_seed.std(ddof=1) if len(per_seed) > 1 else 0.0
    return f"{per_seed.mean():.1f} ± {sd:.1f}"


if __name__ == "__main__":
    main()
