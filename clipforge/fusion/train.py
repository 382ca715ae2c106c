"""`clipforge fuse train`: fit one head on cached features of a frozen bundle, evaluate it, save it.

Epochs only gather rows of the cached feature matrices (no encoder), so a head trains in seconds.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from clipforge.encoders.jsonfile import json_text
from clipforge.fusion.config import FuseConfig, save_fuse_config
from clipforge.fusion.features import PairSet, load_pairs
from clipforge.fusion.head import probabilities, save_head
from clipforge.fusion.kinds import Fusion, build_fusion
from clipforge.fusion.metrics import evaluate_groups

log = logging.getLogger(__name__)
BINARY_TRUE = ("yes", "true", "1", "positive", "pos")
RUN_FILES = ("config.yaml", "metrics.jsonl")  # beside head/ in a run folder
BINARY_FALSE = ("no", "false", "0", "negative", "neg")


def label_names(cfg: FuseConfig, train: PairSet) -> list[str]:
    if cfg.head.labels:
        return list(cfg.head.labels)
    if cfg.head.task == "binary":
        return ["no", "yes"]
    if cfg.head.task == "multilabel":
        names = sorted({x for v in train.labels for x in label_list(v)})
        if not names:
            raise ValueError(f"{cfg.data.train}: no row has a label: a multilabel head needs at least one")
        return names
    names = sorted({str(v) for v in train.labels})
    if "" in names:
        raise ValueError(f"{cfg.data.train}: a row has an empty label: a class needs a name")
    return names


def label_list(v: Any) -> list[str]:
    """A multilabel value: a JSON list, or (CSV) one string with names separated by '|' (spaces around a name
    are not part of it: "a| b" is a and b)."""
    items = v if isinstance(v, list) else str(v).split("|")
    return [name for name in (str(x).strip() for x in items) if name]


def encode_targets(values: list[Any], task: str, labels: list[str]) -> np.ndarray:
    """Raw label values -> class index [N] (binary, multiclass) or 0/1 matrix [N, C] (multilabel)."""
    pos = {name: i for i, name in enumerate(labels)}
    if task == "binary":
        return np.array([binary_index(v, labels) for v in values], np.int64)
    if task == "multiclass":
        unknown = sorted({str(v) for v in values} - set(pos))
        if unknown:
            raise ValueError(f"label(s) {unknown[:5]} not among the head's labels {labels[:10]}")
        return np.array([pos[str(v)] for v in values], np.int64)
    m = np.zeros((len(values), len(labels)), np.float32)
    for i, v in enumerate(values):
        for x in label_list(v):
            if x not in pos:
                raise ValueError(f"label {x!r} not among the head's labels {labels[:10]}")
            m[i, pos[x]] = 1
    return m


def binary_index(v: Any, labels: list[str]) -> int:
    """A binary label value -> 0 (labels[0], the negative) or 1 (labels[1]). The label names match first; the
    usual words (yes/true/1 ..., no/false/0 ...) and booleans only when the labels agree with them (neither a
    "true" word as the negative nor a "false" word as the positive): with labels [yes, no] or [absent, no],
    "true" or "yes" is refused rather than read as the positive."""
    neg, pos = labels[0].strip().lower(), labels[1].strip().lower()
    s = str(v).strip().lower()
    if s == pos:
        return 1
    if s == neg:
        return 0
    synonyms = neg not in BINARY_TRUE and pos not in BINARY_FALSE
    if synonyms and (v is True or s in BINARY_TRUE):
        return 1
    if synonyms and (v is False or s in BINARY_FALSE):
        return 0
    raise ValueError(f"binary label {v!r} is neither {labels[0]!r} nor {labels[1]!r}")


def _targets(spec: str, data: PairSet, task: str, labels: list[str]) -> np.ndarray:
    """`encode_targets`, its error naming the data set (the run may read two)."""
    try:
        return encode_targets(data.labels, task, labels)
    except ValueError as exn:
        raise ValueError(f"{spec}: {exn}") from None


def outputs(task: str, labels: list[str]) -> int:
    return 1 if task == "binary" else len(labels)


def loss_fn(logits: torch.Tensor, target: torch.Tensor, task: str) -> torch.Tensor:
    if task == "multiclass":
        loss = torch.nn.functional.cross_entropy(logits, target)
    else:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target.float().reshape(logits.shape))
    if not torch.isfinite(loss):
        raise RuntimeError(f"fusion loss is not finite ({loss.item()}): lower fit.lr")
    return loss


def module_kwargs(cfg: FuseConfig) -> dict[str, int]:
    h = cfg.head
    return {
        "width": h.width,
        "width_text": h.width_text,
        "rank": h.rank,
        "hidden": h.hidden,
        "post_hidden": h.post_hidden,
    }


def budget_kwargs(cfg: FuseConfig) -> dict[str, int]:
    """`module_kwargs` without the projection widths: what a parameter budget leaves as configured."""
    return {k: v for k, v in module_kwargs(cfg).items() if k not in ("width", "width_text")}


def budget_width(kind: str, dim: int, out: int, budget: int, **kw: int) -> int:
    """The largest projection width p whose `kind` module has at most `budget` parameters (at least 1):
    how `fuse compare` gives every kind the same parameter budget (late has 2 per output, whatever p)."""
    best = 1
    for p in range(1, dim + 1):
        n_params = build_fusion(kind, dim, out, **{**kw, "width": p, "width_text": 0}).n_params()
        if n_params > budget:
            if p == 1:
                log.warning(
                    "head.budget=%d is below the smallest %s head: using width 1 (%d params)", budget, kind, n_params
                )
            break
        best = p
    return best


@torch.no_grad()
def predict(module: Fusion, data: PairSet, task: str, batch: int = 8192) -> np.ndarray:
    module.eval()
    zi, zt = torch.from_numpy(data.image_features), torch.from_numpy(data.text_features)
    ii, ti = torch.from_numpy(data.image_idx), torch.from_numpy(data.text_idx)
    logits = [module(zi[ii[s : s + batch]], zt[ti[s : s + batch]]) for s in range(0, len(ii), batch)]
    return probabilities(torch.cat(logits).numpy(), task)


def fit(
    module: Fusion,
    train: PairSet,
    val: PairSet | None,
    cfg: FuseConfig,
    labels: list[str],
    *,
    log: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """AdamW on the cached features; evaluates `val` after each epoch (logged, not used to pick weights)."""
    f = cfg.fit
    torch.manual_seed(f.seed)
    threads = torch.get_num_threads()
    if f.threads:
        torch.set_num_threads(f.threads)  # restored below: the process (quickstart: the server) keeps its own
    try:
        return _fit(module, train, val, cfg, labels, log, progress)
    finally:
        torch.set_num_threads(threads)


def _fit(
    module: Fusion, train: PairSet, val: PairSet | None, cfg: FuseConfig, labels: list[str], log: Any, progress: bool
) -> dict[str, Any]:
    task, f = cfg.head.task, cfg.fit
    zi, zt = torch.from_numpy(train.image_features), torch.from_numpy(train.text_features)
    ii, ti = torch.from_numpy(train.image_idx), torch.from_numpy(train.text_idx)
    y = torch.from_numpy(encode_targets(train.labels, task, labels))
    y_val = encode_targets(val.labels, task, labels) if val is not None else None
    n = len(ii)
    if module.convex:
        opt: torch.optim.Optimizer = torch.optim.LBFGS(module.parameters(), max_iter=10, line_search_fn="strong_wolfe")
    else:
        opt = torch.optim.AdamW(module.parameters(), lr=f.lr, weight_decay=f.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=f.epochs * -(-n // f.batch_size))
    gen = torch.Generator().manual_seed(f.seed)
    history, train_seconds = [], 0.0
    bar = tqdm(range(f.epochs), desc=f"fuse {module.kind}", unit="epoch", disable=not progress, dynamic_ncols=True)
    for epoch in bar:
        module.train()
        t0 = time.perf_counter()
        if module.convex:
            opt.step(lambda: _full_batch_loss(module, opt, zi, zt, ii, ti, y, task))
            total = _loss_now(module, zi, zt, ii, ti, y, task) * n  # step() returns the loss from before it
        else:
            perm, total = torch.randperm(n, generator=gen), 0.0
            for s in range(0, n, f.batch_size):
                b = perm[s : s + f.batch_size]
                loss = loss_fn(module(zi[ii[b]], zt[ti[b]]), y[b], task)  # [B, D] x2 gathered from the cache
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(b)
        train_seconds += time.perf_counter() - t0
        rec: dict[str, Any] = {"epoch": epoch + 1, "loss": total / n, "pairs_per_s": n * (epoch + 1) / train_seconds}
        if val is not None and y_val is not None:
            ev = evaluate_groups(predict(module, val, task), y_val, task, labels, val.groups)
            rec["val"] = {k: v for k, v in ev.items() if isinstance(v, float | int)}
        history.append(rec)
        if log is not None:
            log.write(json_text(rec) + "\n")
            log.flush()
        bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec.get('val', {}).get('accuracy', float('nan')):.3f}")
    bar.close()
    return {"history": history, "train_seconds": train_seconds, "pairs_per_s": n * f.epochs / max(train_seconds, 1e-9)}


def _full_batch_loss(
    module: Fusion, opt: Any, zi: Any, zt: Any, ii: Any, ti: Any, y: Any, task: str, chunk: int = 65536
) -> float:
    """L-BFGS closure: the mean loss over all pairs, gradients accumulated chunk by chunk (bounded memory)."""
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for s in range(0, len(ii), chunk):
        loss = loss_fn(module(zi[ii[s : s + chunk]], zt[ti[s : s + chunk]]), y[s : s + chunk], task)
        (loss * len(ii[s : s + chunk]) / len(ii)).backward()
        total += float(loss.detach()) * len(ii[s : s + chunk])
    return total / len(ii)


@torch.no_grad()
def _loss_now(module: Fusion, zi: Any, zt: Any, ii: Any, ti: Any, y: Any, task: str, chunk: int = 65536) -> float:
    """The mean loss over all pairs with the module's current weights."""
    total = 0.0
    for s in range(0, len(ii), chunk):
        total += float(loss_fn(module(zi[ii[s : s + chunk]], zt[ti[s : s + chunk]]), y[s : s + chunk], task)) * len(
            ii[s : s + chunk]
        )
    return total / len(ii)


def load_sets(cfg: FuseConfig, progress: bool = True) -> tuple[PairSet, PairSet | None]:
    d = cfg.data
    if not d.bundle or not d.train:
        raise ValueError("give data.bundle and data.train (e.g. --set data.bundle=runs/quickstart/bundle)")
    kw = dict(
        image_key=d.image_key,
        text_key=d.text_key,
        label_key=d.label_key,
        group_keys=d.group_keys,
        cache_dir=d.cache_dir or None,
        batch_size=d.batch_size,
        device=d.device,
        progress=progress,
    )
    train = load_pairs(d.train, d.bundle, **kw)  # type: ignore[arg-type]
    val = load_pairs(d.val, d.bundle, **kw) if d.val else None  # type: ignore[arg-type]
    return train, val


def train_head(
    cfg: FuseConfig, sets: tuple[PairSet, PairSet | None] | None = None, progress: bool = True
) -> dict[str, Any]:
    """Train `cfg.head.kind` into `cfg.out_dir` (config.yaml, metrics.jsonl, head/); returns a summary.

    Every input (tables, features, labels) is read and checked before anything is written, and the run's
    files are built in a hidden sibling folder and moved in only once the head is saved: a failed run
    leaves no half-made folder and never overwrites the files of an earlier run in the same place."""
    out = Path(cfg.out_dir)
    check_out_dir(out)
    t0 = time.perf_counter()
    train, val = sets or load_sets(cfg, progress)
    feature_seconds = time.perf_counter() - t0
    labels = label_names(cfg, train)
    y = _targets(cfg.data.train, train, cfg.head.task, labels)  # labels checked before any file is written
    if val is not None:
        _targets(cfg.data.val, val, cfg.head.task, labels)
    if cfg.head.task == "binary" and len(np.unique(y)) < 2:
        log.warning("%s: every training label is %r: the head can only learn one answer", cfg.data.train, labels[y[0]])
    torch.manual_seed(cfg.fit.seed)  # the initial weights too: a head must not depend on what ran before it
    module = build_fusion(cfg.head.kind, train.dim, outputs(cfg.head.task, labels), **module_kwargs(cfg))
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_fuse_config(cfg, stage / "config.yaml")
        with open(stage / "metrics.jsonl", "w") as log_file:
            result = fit(module, train, val, cfg, labels, log=log_file, progress=progress)
        run = _finish(cfg, out, stage, module, train, val, labels)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return run | {
        "n_params": module.n_params(),
        "pairs": len(train),
        "feature_cache_hit": train.cache_hit,
        "feature_seconds": feature_seconds,
        "train_seconds": result["train_seconds"],
        "pairs_per_s": result["pairs_per_s"],
        "history": result["history"],
        "module": module,
    }


def check_out_dir(out: Path) -> None:
    """Refuse an out_dir whose config.yaml or metrics.jsonl are not an earlier run's (no head/ beside them):
    `--set out_dir=.` must not replace a project's own config.yaml."""
    theirs = [n for n in RUN_FILES if (out / n).exists()]
    if theirs and not (out / "head" / "head.json").is_file():
        raise ValueError(
            f"out_dir {out} holds {' and '.join(theirs)} but no head/: not a fuse run's folder, so its files "
            "are not replaced: choose another out_dir"
        )


def _finish(
    cfg: FuseConfig, out: Path, stage: Path, module: Fusion, train: PairSet, val: PairSet | None, labels: list[str]
) -> dict[str, Any]:
    """Evaluate, save the head into `out`, then move the staged config and metrics next to it."""
    metrics: dict[str, Any] = {}
    if val is not None:
        y_val = encode_targets(val.labels, cfg.head.task, labels)
        metrics = evaluate_groups(predict(module, val, cfg.head.task), y_val, cfg.head.task, labels, val.groups)
    summary_metrics = {k: v for k, v in metrics.items() if isinstance(v, float | int)}
    head_dir = save_head(
        out / "head",
        module,
        task=cfg.head.task,
        labels=labels,
        bundle_fingerprint=train.fingerprint,
        metrics=summary_metrics,
        name=cfg.name or cfg.head.kind,
        provenance={
            "train": cfg.data.train,
            "val": cfg.data.val,
            "bundle": str(Path(cfg.data.bundle).resolve()),  # fuse eval / predict find it from any directory
            "pairs": len(train),
            "epochs": cfg.fit.epochs,
            "config": cfg.to_dict(),
        },
    )
    out.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        os.replace(stage / name, out / name)
    return {"head": str(head_dir), "kind": cfg.head.kind, "metrics": summary_metrics, "full_metrics": metrics}


def with_kind(cfg: FuseConfig, kind: str, out_dir: str | Path, width: int | None = None) -> FuseConfig:
    widths: dict[str, Any] = {"width": width, "width_text": 0} if width is not None else {}
    head = replace(cfg.head, kind=kind, **widths)
    return replace(cfg, head=head, out_dir=str(out_dir), name=kind)
