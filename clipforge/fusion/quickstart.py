"""The main job's fusion step: a head answering "is there a red circle?" about an image, beside the
`late` (zero-shot cosine) and `additive` baselines, on the synthetic question set."""

from __future__ import annotations

import time
from pathlib import Path

from clipforge.fusion.config import load_fuse_config
from clipforge.fusion.train import load_sets, train_head, with_kind

QUICKSTART_KIND = "multiplicative"


def quickstart_fusion(bundle: str | Path, data: str | Path, out: str | Path, kind: str = QUICKSTART_KIND) -> Path:
    """Write the question set if `data` lacks it, embed it once (cached), train `late`, `additive` and `kind`;
    print their held-out accuracies and return the head folder of `kind` (the one the service loads)."""
    t0 = time.perf_counter()
    data, out = Path(data), Path(out)
    questions = data / "questions"
    if not (questions / "questions.json").is_file():
        from clipforge.training.synth import write_questions  # the data generator only, never the trainer

        write_questions(questions)
    cfg = load_fuse_config(
        "synth-questions",
        [
            f"out_dir={out}",
            f"data.bundle={bundle}",
            f"data.train={questions / 'train.jsonl'}",
            f"data.val={questions / 'test.jsonl'}",
            f"data.cache_dir={out / 'cache'}",
        ],
    )
    sets = load_sets(cfg, progress=True)
    acc = {}
    for k in dict.fromkeys(("late", "additive", kind)):
        run = train_head(with_kind(cfg, k, out / k), sets=sets, progress=False)
        acc[k] = run["metrics"]
    best, val = acc[kind], sets[1]
    print(
        f"  held-out accuracy on {len(val) if val else 0:,} yes/no questions (chance 0.500): "
        + ", ".join(f"{k} {m['accuracy']:.3f}" for k, m in acc.items())
    )
    print(
        "  on held-out colour+shape combinations: "
        + ", ".join(f"{k} {m.get('heldout/accuracy', float('nan')):.3f}" for k, m in acc.items())
    )
    print(f"  head: {out / kind / 'head'} ({kind}, AUROC {best['auroc']:.3f}; {time.perf_counter() - t0:.0f} s)")
    return out / kind / "head"
