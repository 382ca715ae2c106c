"""Does fusing at the level of image patches change the answer? A probe on the synthetic question sets.

    python benchmarks/fusion_tokens.py --bundle runs/quickstart/bundle --data data/synth [--task binding]
        [--kinds concat,multiplicative,tensor,gated] [--budget 4800] [--seeds 3]

Every fusion kind (clipforge/fusion/kinds) takes ONE pooled embedding per side, and on those `concat` (an
MLP) is at or above the structured kinds at equal parameter budget (benchmarks/RESULTS.md). Bilinear
pooling's reported wins in the literature come with region- or token-level image features, where the
question can pick out the object it is about. This probe asks whether that changes the answer on a bundle
of this project: it reads the ViT's patch tokens (projected into the embedding space, L2-normalised) and
feeds the SAME kind three ways, each kind within the same parameter budget:

  pooled   the bundle's pooled image embedding (what `fuse compare` trains on);
  patches  the kind applied to every patch with the question, its logits pooled over the patches by a soft
           maximum (log-mean-exp): "is there a patch where ...": the same parameters as pooled;
  attend   question-guided attention over the patches (query and key projections of width 8, counted in the
           budget; `late` is the one kind that gets them on top of its 2 parameters) makes one image vector
           per question, then the kind.

Prints, per mode and kind: parameters, train and test accuracy (mean ± sd over seeds) and held-out accuracy.
The heads train as `fuse train` trains them (the preset's epochs, batch size, AdamW and cosine schedule, one
torch thread by default; the pooled `late` by full-batch L-BFGS; the same initial weights, so the pooled rows
are `fuse compare`'s to the digit), but in this script: the service and the `fuse`
commands take pooled embeddings only. Writes the question sets under DATA/questions if they are missing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fusion_bench import TASKS  # noqa: E402

MODES = ("pooled", "patches", "attend")
ATTEND_WIDTH = 8


def features(bundle_path: str, table: Path) -> dict:
    """Pooled and patch features of every image of a question table, and its questions' text features."""
    import torch

    from clipforge.encoders.bundle import load_bundle

    bundle = load_bundle(bundle_path, device="cpu")
    visual = bundle.model.visual
    if not hasattr(visual, "output_tokens"):
        raise SystemExit(f"{bundle_path}: patch tokens are read from ViT image towers only ({type(visual).__name__})")
    rows = [json.loads(line) for line in table.read_text().splitlines() if line.strip()]
    images = list(dict.fromkeys(r["image"] for r in rows))
    texts = list(dict.fromkeys(r["text"] for r in rows))
    pooled, patches = [], []
    visual.output_tokens = True
    try:
        with torch.no_grad():
            for s in range(0, len(images), 256):
                pixels = bundle.preprocess([bundle.load_image(table.parent / p) for p in images[s : s + 256]])
                p, t = visual(pixels)
                if visual.proj is not None:
                    t = t @ visual.proj  # patch tokens into the embedding space the pooled vector lives in
                pooled.append(torch.nn.functional.normalize(p, dim=-1))
                patches.append(torch.nn.functional.normalize(t, dim=-1))
            zt = torch.cat([bundle.encode_texts(texts[s : s + 256]) for s in range(0, len(texts), 256)])
    finally:
        visual.output_tokens = False
    img_pos = {im: i for i, im in enumerate(images)}
    txt_pos = {t: i for i, t in enumerate(texts)}
    return {
        "pooled": torch.cat(pooled),
        "patches": torch.cat(patches),
        "text": zt,
        "ii": torch.tensor([img_pos[r["image"]] for r in rows]),
        "ti": torch.tensor([txt_pos[r["text"]] for r in rows]),
        "labels": [r["label"] for r in rows],
        "heldout": torch.tensor([bool(r.get("heldout")) for r in rows]),
    }


def attend_params(mode: str, dim: int) -> int:
    return 2 * (dim * ATTEND_WIDTH + ATTEND_WIDTH) if mode == "attend" else 0


def check_budget(modes: list[str], kinds: list[str], dim: int, out: int, budget: int, cfg) -> None:
    """Refuse a budget below some kind's smallest head in some mode, as `fuse compare` does."""
    from clipforge.fusion.kinds import build_fusion
    from clipforge.fusion.train import budget_kwargs

    kw = budget_kwargs(cfg)
    for mode in modes:
        for kind in [k for k in kinds if k != "late"]:
            n = build_fusion(kind, dim, out, **{**kw, "width": 1, "width_text": 0}).n_params()
            if n + attend_params(mode, dim) > budget:
                raise SystemExit(
                    f"--budget {budget:,} is below the smallest {mode} {kind} head "
                    f"({n + attend_params(mode, dim):,} parameters): give a larger one"
                )


def build(mode: str, kind: str, dim: int, out: int, budget: int, cfg, seed: int):
    """The module for `mode`: a fusion kind (its width the largest within the budget), wrapped for patches."""
    import torch

    from clipforge.fusion.kinds import build_fusion
    from clipforge.fusion.train import budget_kwargs, budget_width

    kw = budget_kwargs(cfg)
    width = 0 if kind == "late" else budget_width(kind, dim, out, budget - attend_params(mode, dim), **kw)
    torch.manual_seed(seed)  # after the width search (it builds modules): the initial weights `fuse train` draws
    fusion = build_fusion(kind, dim, out, width=width, **kw)

    class Probe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fusion = fusion
            if mode == "attend":
                self.q = torch.nn.Linear(dim, ATTEND_WIDTH)
                self.k = torch.nn.Linear(dim, ATTEND_WIDTH)

        def forward(self, zi: torch.Tensor, zt: torch.Tensor) -> torch.Tensor:
            if mode == "pooled":
                return self.fusion(zi, zt)
            n, p, d = zi.shape  # [N, patches, D]
            if mode == "attend":
                a = torch.softmax((self.k(zi) * self.q(zt)[:, None]).sum(-1) / math.sqrt(ATTEND_WIDTH), dim=1)
                return self.fusion(torch.nn.functional.normalize((a[..., None] * zi).sum(1), dim=-1), zt)
            logits = self.fusion(zi.reshape(n * p, d), zt[:, None].expand(n, p, d).reshape(n * p, d))
            return torch.logsumexp(logits.reshape(n, p, -1), dim=1) - math.log(p)  # soft max over patches

    return Probe()


def run(mode: str, kind: str, seed: int, train: dict, test: dict, cfg, labels: list[str], budget: int) -> dict:
    import torch

    from clipforge.fusion.train import encode_targets, loss_fn, outputs

    task, f = cfg.head.task, cfg.fit
    image_key = "pooled" if mode == "pooled" else "patches"
    module = build(mode, kind, train["text"].shape[1], outputs(task, labels), budget, cfg, seed)
    y = torch.from_numpy(encode_targets(train["labels"], task, labels))
    n = len(y)
    gen = torch.Generator().manual_seed(seed)

    def forward(d: dict, idx: torch.Tensor) -> torch.Tensor:
        return module(d[image_key][d["ii"][idx]], d["text"][d["ti"][idx]])

    t0 = time.perf_counter()
    module.train()
    if module.fusion.convex and mode == "pooled":  # late: fitted to its optimum, as `fuse train` fits it
        lbfgs = torch.optim.LBFGS(module.parameters(), max_iter=10, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            lbfgs.zero_grad(set_to_none=True)
            loss = loss_fn(forward(train, torch.arange(n)), y, task)
            loss.backward()
            return loss

        for _ in range(f.epochs):
            lbfgs.step(closure)
    else:
        opt = torch.optim.AdamW(module.parameters(), lr=f.lr, weight_decay=f.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=f.epochs * -(-n // f.batch_size))
        for _ in range(f.epochs):
            perm = torch.randperm(n, generator=gen)
            for s in range(0, n, f.batch_size):
                b = perm[s : s + f.batch_size]
                loss = loss_fn(forward(train, b), y[b], task)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    seconds = time.perf_counter() - t0
    module.eval()

    def correct(d: dict) -> torch.Tensor:
        with torch.no_grad():  # in slices: a patch mode holds [slice, patches, D]
            idx = torch.arange(len(d["ii"]))
            logits = torch.cat([forward(d, idx[s : s + 1024]) for s in range(0, len(idx), 1024)])
        target = torch.from_numpy(encode_targets(d["labels"], task, labels))
        if task == "binary":
            return ((logits[:, 0] > 0).long() == target.long()).float()
        return (logits.argmax(1) == target).float()

    c_test = correct(test)
    return {
        "params": sum(p.numel() for p in module.parameters()),
        "train": float(correct(train).mean()),
        "test": float(c_test.mean()),
        "heldout": float(c_test[test["heldout"]].mean()) if bool(test["heldout"].any()) else float("nan"),
        "seconds": seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True, help="a ViT bundle (the main job's runs/quickstart/bundle)")
    ap.add_argument("--data", required=True, help="the synthetic set's folder (clipforge data synth)")
    ap.add_argument("--task", choices=sorted(TASKS), default="binding")
    ap.add_argument("--kinds", default="late,concat,additive,multiplicative,tensor,lowrank,gated")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--budget", type=int, default=0, help="parameters per head (default: the preset's)")
    ap.add_argument("--seeds", type=int, default=1)
    args = ap.parse_args()

    import torch

    from clipforge.fusion.compare import parse_kinds
    from clipforge.fusion.config import load_fuse_config
    from clipforge.fusion.train import outputs
    from clipforge.training.synth import ensure_questions

    try:
        kinds = parse_kinds(args.kinds)
    except ValueError as exn:
        raise SystemExit(f"--kinds: {exn}") from None
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        raise SystemExit(f"--modes: a comma list of {', '.join(MODES)}")
    if args.seeds < 1:
        raise SystemExit("--seeds must be at least 1")
    preset, train_file, test_file, example = TASKS[args.task]
    cfg = load_fuse_config(preset, [])
    labels = list(cfg.head.labels)
    budget = args.budget or cfg.head.budget
    q = Path(args.data) / "questions"
    ensure_questions(q)  # written if missing, as fusion_bench.py does
    torch.set_num_threads(cfg.fit.threads or torch.get_num_threads())  # as `fuse train` (fit.threads: 1)
    print(f"task {args.task} ({example!r}), bundle {args.bundle}, budget {budget}, {args.seeds} seed(s)")
    train, test = features(args.bundle, q / train_file), features(args.bundle, q / test_file)
    check_budget(modes, kinds, train["text"].shape[1], outputs(cfg.head.task, labels), budget, cfg)
    print(f"{len(train['ii'])} train / {len(test['ii'])} test pairs; {train['patches'].shape[1]} patches per image")
    print("| mode | kind | params | train acc | test acc (mean ± sd) | held-out acc | s per head |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for mode in modes:
        for kind in kinds:
            rs = [run(mode, kind, cfg.fit.seed + s, train, test, cfg, labels, budget) for s in range(args.seeds)]
            acc = np.array([r["test"] for r in rs])
            sd = acc.std(ddof=1) if len(acc) > 1 else 0.0  # as `fuse compare --seeds` reports it
            print(
                f"| {mode} | {kind} | {rs[0]['params']:,} | {np.mean([r['train'] for r in rs]):.3f} "
                f"| {acc.mean():.3f} ± {sd:.3f} | {np.mean([r['heldout'] for r in rs]):.3f} "
                f"| {np.mean([r['seconds'] for r in rs]):.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
