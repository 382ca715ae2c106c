"""Configs as data: frozen dataclasses are the schema, YAML presets fill them, `--set a.b=v` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipforge import configfile
from clipforge.configfile import build, check_minimums, read_tree, save_yaml
from clipforge.encoders.images import DEFAULT_MAX_PIXELS
from clipforge.encoders.model import MAX_LOGIT_SCALE
from clipforge.encoders.prompts import DEFAULT_TEMPLATES
from clipforge.encoders.text import MAX_CAPTION_CHARS

PRESET_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class ModelCfg:
    arch: str = "cf-tiny-vit"  # shipped config name, open_clip architecture name, or JSON path
    init_bundle: str | None = None  # start from an existing bundle's weights (fine-tuning)
    lock_image: bool = False  # freeze the image tower (LiT-style tuning) ...
    lock_image_unlocked_groups: int = 0  # ... except its last n layer groups
    lock_text: bool = False  # freeze the text tower ...
    lock_text_unlocked_layers: int = 0  # ... except its last n layers


@dataclass(frozen=True)
class DataCfg:
    train: tuple[str, ...] = ()  # shard specs: brace patterns, local paths or pipe: URLs
    weights: tuple[float, ...] = ()  # mixing weights, one per train source (default: equal)
    val: str | None = None  # held-out shards for retrieval evaluation
    zeroshot: str | None = None  # folder-per-class image set for zero-shot evaluation
    caption_key: str = "txt"  # "txt", or "json:<field>" to read a field of the .json member
    resampled: bool = False  # endless sampling of shards with replacement
    shard_shuffle: bool = True
    sample_shuffle: int = 2000  # shuffle buffer (samples); 0 disables
    workers: int = 1  # DataLoader worker processes decoding images off the training thread
    max_pixels: int = DEFAULT_MAX_PIXELS  # images above this are skipped as decompression bombs
    max_caption_chars: int = MAX_CAPTION_CHARS

    @property
    def draws_with_replacement(self) -> bool:
        """Shards are drawn with replacement: asked for, or implied by mixing weights (they mean nothing else)."""
        return self.resampled or bool(self.weights)


@dataclass(frozen=True)
class LossCfg:
    kind: str = "clip"  # "clip" (symmetric InfoNCE) or "siglip" (pairwise sigmoid)
    max_logit_scale: float = MAX_LOGIT_SCALE  # exp(logit_scale) is clamped here; bundles report it clamped
    init_logit_bias: float = -10.0  # SigLIP only


@dataclass(frozen=True)
class OptimCfg:
    lr: float = 5e-4
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup_steps: int = 50
    grad_clip: float = 1.0  # max global grad norm; 0 disables


@dataclass(frozen=True)
class TrainCfg:
    batch_size: int = 128  # per process
    accum: int = 1  # micro-batches per step; negatives still span the whole batch
    samples: int = 50_000  # total training samples; steps = samples // (batch_size * world_size)
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (CUDA, with GradScaler)
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 = PyTorch default
    grad_checkpointing: bool = False  # recompute activations in backward: less memory for large towers
    compile: bool = False  # torch.compile the model (worth it for long GPU runs; compile time is minutes)
    channels_last: bool = False  # NHWC memory format, faster convolutions for ResNet towers on GPUs
    log_every: int = 10
    ckpt_every: int = 100
    keep_ckpts: int = 3


@dataclass(frozen=True)
class EvalCfg:
    every: int = 0  # steps between evaluations; 0 = only at the end
    templates: tuple[str, ...] = DEFAULT_TEMPLATES  # the service's list too (encoders/prompts.py)
    val_samples: int = 1000  # held-out pairs used for retrieval
    batch_size: int = 256


@dataclass(frozen=True)
class Config:
    out_dir: str = "runs/default"
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_preset(name_or_path: str) -> Path:
    return configfile.resolve_preset(name_or_path, PRESET_DIR)


# the smallest sensible value of each numeric setting that has one (anything less would divide by zero,
# train zero steps or loop forever)
MINIMUM = {
    "train.batch_size": 1,
    "train.accum": 1,
    "train.samples": 1,
    "train.log_every": 1,
    "train.ckpt_every": 0,
    "train.keep_ckpts": 1,
    "train.threads": 0,
    "optim.warmup_steps": 0,
    "optim.grad_clip": 0,
    "optim.weight_decay": 0,
    "data.workers": 0,
    "data.sample_shuffle": 0,
    "data.max_pixels": 1,
    "data.max_caption_chars": 1,
    "eval.every": 0,
    "eval.val_samples": 1,
    "eval.batch_size": 1,
    "loss.max_logit_scale": 1,
}


def check_ranges(cfg: Config) -> Config:
    check_minimums(cfg.to_dict(), MINIMUM)
    return cfg


def load_config(name_or_path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML preset (path or shipped name) and apply `a.b=value` overrides (values parsed as YAML)."""
    tree = read_tree(name_or_path, overrides, PRESET_DIR, "presets")
    return check_ranges(build(Config, tree))


def save_config(cfg: Config, path: str | Path) -> None:
    save_yaml(cfg, path)
