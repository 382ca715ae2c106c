"""The trainer's state (model, optimizer, scaler, counters, data position) and its checkpoints."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clipforge.encoders.model import load_weights
from clipforge.training.checkpoint import (
    latest_valid_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from clipforge.training.config import Config
from clipforge.training.data import DataState
from clipforge.training.distributed import DistInfo
from clipforge.training.optim import make_optimizer
from clipforge.training.setup import Runtime

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    model: torch.nn.Module  # the plain model: checkpoints and the bundle save it
    wrapped: torch.nn.Module  # what the step calls: `model`, or DDP and/or torch.compile around it
    optimizer: torch.optim.Optimizer
    scaler: Any  # torch.amp.GradScaler (a no-op unless fp16)
    step: int = 0
    samples_seen: int = 0
    data: DataState = field(default_factory=DataState)

    @classmethod
    def create(cls, model: torch.nn.Module, cfg: Config, rt: Runtime, resume: tuple[Path, dict] | None) -> TrainState:
        """Move `model` to the device, make its optimizer, restore `resume` (path, checkpoint) if given, then
        wrap it for the process group (DDP broadcasts rank 0's weights: every rank has loaded the same)."""
        model.to(rt.device, memory_format=rt.memory_format)
        o = cfg.optim
        optimizer = make_optimizer(model, o.lr, o.weight_decay, (o.beta1, o.beta2), o.eps)
        state = cls(model, model, optimizer, torch.amp.GradScaler("cuda", enabled=rt.precision == "fp16"))
        if resume:
            state.load(resume[1], cfg, rt.info)
            log.info("resumed from %s at step %d", resume[0], state.step)
        if rt.info.enabled:
            device_ids = [rt.device.index] if rt.device.type == "cuda" else None
            state.wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        if cfg.train.compile:
            state.wrapped = torch.compile(state.wrapped)
        return state

    def load(self, ckpt: dict[str, Any], cfg: Config, info: DistInfo) -> None:
        where = f"the checkpoint (a {ckpt.get('arch', '?')} run; model.arch is {cfg.model.arch})"
        load_weights(self.model, ckpt["model"], where)  # one line naming the first mismatched keys
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt["scaler"] or not self.scaler.is_enabled():  # a bf16/fp32 run's scaler saved nothing: start afresh
            self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        self.step, self.samples_seen = int(ckpt["step"]), int(ckpt["samples_seen"])
        self.data = DataState.for_rank(ckpt["data"], info.rank, info.world_size, cfg.data.workers)
        torch.manual_seed(cfg.train.seed + info.rank + 1_000_003 * self.step)  # fresh augmentation stream


def find_checkpoint(run_dir: Path, resume: str | None) -> tuple[Path, dict[str, Any]] | None:
    """`resume` None: start afresh; "auto": the newest valid checkpoint of the run, if any; else a path."""
    if not resume:
        return None
    if resume == "auto":
        return latest_valid_checkpoint(run_dir)
    return Path(resume), load_checkpoint(Path(resume))


class Checkpointer:
    """Writes the state to RUN_DIR/checkpoints (rank 0), with every rank's data position in it."""

    def __init__(self, run_dir: Path, cfg: Config, info: DistInfo, meta: dict[str, Any]) -> None:
        self.run_dir, self.info, self.workers, self.keep = run_dir, info, cfg.data.workers, cfg.train.keep_ckpts
        self.meta = {**meta, "loss": cfg.loss.kind, "config": cfg.to_dict()}  # arch, model_cfg: what was built

    def save(self, state: TrainState) -> None:
        data_sd = {str(self.info.rank): state.data.state_dict(self.workers)}
        if self.info.enabled:  # every rank's data position goes into rank 0's file
            gathered: list[Any] = [None] * self.info.world_size
            torch.distributed.all_gather_object(gathered, data_sd)
            data_sd = {k: v for d in gathered for k, v in d.items()}
        if not self.info.is_main:
            return
        payload = {
            "step": state.step,
            "samples_seen": state.samples_seen,
            "model": state.model.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "scaler": state.scaler.state_dict(),
            "rng": rng_state(),
            "data": data_sd,
            **self.meta,
        }
        save_checkpoint(self.run_dir, state.step, payload, self.keep)
