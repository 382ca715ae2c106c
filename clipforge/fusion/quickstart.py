"""The main job's fusion step: two heads on the synthetic question sets, each beside the `late` (zero-shot
cosine) and `additive` baselines:
  yes-no         "is there a red circle?"  -> yes / no        (the cosine already answers it well)
  yes-no-absent  "is the circle red?"      -> yes / no / absent (the cosine cannot: "no" and "absent" are
                                                                  both part-matches)"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from clipforge.fusion.config import load_fuse_config
from clipforge.fusion.train import load_sets, train_head, with_kind

QUICKSTART_KIND = "multiplicative"
# served name -> (preset, training table, test table under questions/, what is asked)
QUICKSTART_TASKS = {
    "yes-no": ("synth-questions", "train.jsonl", "test.jsonl", '"is there a red circle?" yes/no'),
    "yes-no-absent": (
        "synth-questions-3way",
        "3way-train.jsonl",
        "3way-test.jsonl",
        '"is the circle red?" yes/no/absent',
    ),
}


def quickstart_fusion(bundle: str | Path, data: str | Path, out: str | Path, kind: str = QUICKSTART_KIND) -> list[Path]:
    """Write the question sets if `data` lacks them (or add the 3-way task to an older set); per task, embed it
    once (cached), train `late`, `additive` and `kind`, print their held-out accuracies; return the head folders
    of `kind`, named after their task (the ones the service loads)."""
    t0 = time.perf_counter()
    data, out = Path(data), Path(out)
    questions = data / "questions"
    from clipforge.training.synth import ensure_questions  # the data generator only, never the trainer

    ensure_questions(questions)  # an older set lacks the 3-way task: added for its images, nothing else touched
    heads = []
    for name, (preset, train_table, test_table, what) in QUICKSTART_TASKS.items():
        cfg = load_fuse_config(
            preset,
            [
                f"out_dir={out / name}",
                f"data.bundle={bundle}",
                f"data.train={questions / train_table}",
                f"data.val={questions / test_table}",
                f"data.cache_dir={out / 'cache'}",
            ],
        )
        sets = load_sets(cfg, progress=True)
        acc = {}
        for k in dict.fromkeys(("late", "additive", kind)):
            run_cfg = with_kind(cfg, k, out / name / k)
            run = train_head(replace(run_cfg, name=name) if k == kind else run_cfg, sets=sets, progress=False)
            acc[k] = run["metrics"]
        val, chance = sets[1], 1 / len(cfg.head.labels)
        print(
            f"  {what}: accuracy on {len(val) if val else 0:,} test questions (chance {chance:.3f}): "
            + ", ".join(f"{k} {m['accuracy']:.3f}" for k, m in acc.items())
        )
        print(
            "    on held-out colour+shape combinations: "
            + ", ".join(f"{k} {m.get('heldout/accuracy', float('nan')):.3f}" for k, m in acc.items())
        )
        heads.append(out / name / kind / "head")
        print(f"    head {name!r}: {heads[-1]} ({kind}, AUROC {acc[kind]['auroc']:.3f})")
    print(f"  {len(heads)} heads in {time.perf_counter() - t0:.0f} s")
    return heads
