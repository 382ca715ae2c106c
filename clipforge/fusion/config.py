"""`clipforge fuse` configs: frozen dataclasses, YAML presets (fusion/configs/), `--set a.b=v` overrides.

The parsing (types checked, unknown keys refused, YAML values in --set) is `clipforge.configfile`'s, shared
with the trainer's configs, so both commands read configs the same way."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipforge import configfile
from clipforge.configfile import ConfigError, build, check_minimums, read_tree, save_yaml

PRESET_DIR = Path(__file__).parent / "configs"
TASKS = ("binary", "multiclass", "multilabel")


@dataclass(frozen=True)
class FuseDataCfg:
    bundle: str = ""  # the frozen bundle whose embeddings the head reads
    train: str = ""  # a .jsonl/.csv table of (image path, text, label), or WebDataset shards
    val: str = ""  # held-out set the reported metrics come from (same form)
    image_key: str = "image"  # table column with the image path (shards: the image member)
    text_key: str = "text"  # table column; shards: "txt" or "json:<field>"
    label_key: str = "label"  # table column; shards: a field of the json member
    group_keys: tuple[str, ...] = ("heldout",)  # boolean fields reported as subsets
    cache_dir: str = ""  # feature cache; "" = $XDG_CACHE_HOME/clipforge/fusion
    batch_size: int = 128  # encoder batch when features are computed
    device: str = "auto"


@dataclass(frozen=True)
class HeadCfg:
    kind: str = "multiplicative"  # late | concat | additive | multiplicative | tensor | lowrank | gated
    task: str = "binary"  # binary | multiclass | multilabel
    labels: tuple[str, ...] = ()  # binary default (no, yes); else the sorted names found in train
    width: int = 16  # projection width p of each side (0: none, p = D)
    width_text: int = 0  # text side's width if different (0: = width)
    rank: int = 4  # lowrank
    hidden: int = 64  # concat's hidden layer
    post_hidden: int = 0  # structured kinds: a ReLU layer of this width after the fusion (TFN / LMF); 0 = none
    budget: int = 0  # compare: give each kind the width whose parameter count is closest below this


@dataclass(frozen=True)
class FitCfg:
    epochs: int = 30
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 1  # torch intra-op threads while fitting (0 = torch's default). Heads are tiny: on a busy
    # 2-core machine 2 threads ran 50x slower than 1 (benchmarks/fusion_bench.py)


@dataclass(frozen=True)
class FuseConfig:
    out_dir: str = "runs/fuse"
    name: str = ""  # the head's name (default: the kind)
    data: FuseDataCfg = field(default_factory=FuseDataCfg)
    head: HeadCfg = field(default_factory=HeadCfg)
    fit: FitCfg = field(default_factory=FitCfg)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


MINIMUM = {
    "fit.epochs": 1,
    "fit.batch_size": 1,
    "fit.lr": 0,
    "fit.weight_decay": 0,
    "fit.threads": 0,
    "head.width": 0,
    "head.width_text": 0,
    "head.rank": 1,
    "head.hidden": 1,
    "head.post_hidden": 0,
    "head.budget": 0,
    "data.batch_size": 1,
}


def check(cfg: FuseConfig) -> FuseConfig:
    for key in ("lr", "weight_decay"):  # NaN passes every `<` test and inf would diverge: refuse both here
        if not math.isfinite(getattr(cfg.fit, key)):
            raise ConfigError(f"fit.{key} must be a finite number, got {getattr(cfg.fit, key)}")
    check_minimums(cfg.to_dict(), MINIMUM)
    from clipforge.fusion.head import HEAD_NAME
    from clipforge.fusion.kinds import KINDS, check_widths

    if cfg.head.kind not in KINDS:
        raise ConfigError(f"head.kind must be one of {', '.join(KINDS)}, got {cfg.head.kind!r}")
    if cfg.head.task not in TASKS:
        raise ConfigError(f"head.task must be one of {TASKS}, got {cfg.head.task!r}")
    if cfg.name and not HEAD_NAME.fullmatch(cfg.name):  # refused now, not by `serve` after the training
        raise ConfigError(f"name {cfg.name!r}: a head's name is served in a URL: use 1-64 letters, digits, _ . -")
    labels = [str(x) for x in cfg.head.labels]
    if cfg.head.task == "binary" and labels and len(labels) != 2:
        raise ConfigError(f"a binary head has two labels [negative, positive], got {labels}")
    folded = [x.strip().lower() if cfg.head.task == "binary" else x for x in labels]  # binary reads case-blind
    if len(set(folded)) < len(folded):
        raise ConfigError(f"head.labels names a label twice: {labels}")
    try:
        check_widths(cfg.head.kind, cfg.head.width, cfg.head.width_text)
    except ValueError as exn:
        raise ConfigError(str(exn)) from None
    return cfg


def resolve_preset(name_or_path: str) -> Path:
    return configfile.resolve_preset(name_or_path, PRESET_DIR, "fusion presets")


def load_fuse_config(name_or_path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> FuseConfig:
    return check(build(FuseConfig, read_tree(name_or_path, overrides, PRESET_DIR, "fusion presets")))


def save_fuse_config(cfg: FuseConfig, path: str | Path) -> None:
    save_yaml(cfg, path)
