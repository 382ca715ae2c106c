"""What a run needs before its first step: the runtime (device, precision, process group), the model to
train, its input stream, and a check of every input path the job will read."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipforge.encoders.bundle import load_bundle
from clipforge.encoders.device import resolve_device, resolve_precision
from clipforge.encoders.images import draft_size
from clipforge.encoders.model import build_model, get_tokenizer, preprocess_cfg, resolve_model_config, tokenizer_cfg
from clipforge.training.augment import TrainTransform, normalizer
from clipforge.training.config import Config
from clipforge.training.data import DataState, ShardStream, StreamSpec, expand_urls, make_loader
from clipforge.training.distributed import DistInfo, init_distributed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16, resolved for the device
    info: DistInfo  # this process's rank in the torchrun group (world size 1 without torchrun)
    memory_format: torch.memory_format

    @classmethod
    def from_config(cls, cfg: Config) -> Runtime:
        """Join the process group, pick the device and precision, and seed this rank."""
        device = resolve_device(cfg.train.device)
        info = init_distributed(device.type)
        if info.enabled and device.type == "cuda":
            device = torch.device("cuda", info.local_rank)
        precision = resolve_precision(cfg.train.precision, device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.train.seed + info.rank)
        memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        return cls(device, precision, info, memory_format)


def _is_local(url: str) -> bool:
    return not url.startswith("pipe:") and "://" not in url


def check_inputs(cfg: Config, world_size: int = 1, rank: int = 0) -> None:
    """Fail before the first step, in one line, on an input the job would only read later (the held-out
    shards and the zero-shot set are first read at the final evaluation, minutes or hours in), and on shards
    too few for every rank to read one (that rank's stream would end at once and take the job down)."""
    from clipforge.training.evaluate import zeroshot_set

    if not cfg.data.train:
        raise ValueError("no training shards given (data.train is empty)")
    if cfg.data.weights and len(cfg.data.weights) != len(cfg.data.train):
        raise ValueError(f"data.weights has {len(cfg.data.weights)} entries for {len(cfg.data.train)} sources")
    if cfg.data.weights and (any(w < 0 for w in cfg.data.weights) or not sum(cfg.data.weights) > 0):
        raise ValueError(f"data.weights must be >= 0 with a positive sum, got {list(cfg.data.weights)}")
    n_shards = sum(len(expand_urls(s)) for s in cfg.data.train)
    readers = max(cfg.data.workers, 1)  # shards are dealt to (rank, worker) slots in turn: rank r starts at r*W
    if not cfg.data.draws_with_replacement and n_shards <= (world_size - 1) * readers:
        raise ValueError(
            f"{n_shards} training shard(s) for {world_size} ranks x {readers} data worker(s): the last ranks would "
            "get none. Use fewer data.workers or ranks, more shards, or data.resampled: true"
        )
    slots = world_size * readers
    uneven = n_shards % slots and (n_shards > slots or world_size > 1)  # one rank, a shard per worker: even
    if not cfg.data.draws_with_replacement and uneven and rank == 0:  # said once, not per rank
        # each (rank, worker) slot cycles its own shards and the loader takes batches from the slots in turn,
        # so a slot dealt fewer shards starts its next pass sooner: its samples are drawn more often
        log.warning(
            "%d training shards do not divide among %d readers (%d rank(s) x %d worker(s)): readers dealt fewer "
            "shards (or ranks with fewer readers) repeat theirs sooner, so some samples are seen more often than "
            "others. Use a multiple of %d shards, other data.workers, or data.resampled: true",
            n_shards,
            slots,
            world_size,
            readers,
            slots,
        )
    for key, spec in [*(("data.train", s) for s in cfg.data.train), ("data.val", cfg.data.val)]:
        urls = expand_urls(spec) if spec else []
        if urls and all(_is_local(u) and not Path(u).is_file() for u in urls):  # (some missing: skipped, counted)
            raise FileNotFoundError(f"{key}: none of the {len(urls)} shard file(s) of {spec!r} exists")
    if cfg.data.zeroshot:
        zeroshot_set(Path(cfg.data.zeroshot))  # at least 2 class folders of images; subsets.json names only those
    if cfg.model.init_bundle and not (Path(cfg.model.init_bundle) / "bundle.json").is_file():
        raise FileNotFoundError(f"model.init_bundle {cfg.model.init_bundle} is not a bundle (no bundle.json)")


def build_training_model(cfg: Config) -> tuple[torch.nn.Module, str, dict[str, Any]]:
    """(model on the CPU, arch name, model config): fresh, or from `model.init_bundle`, towers locked as asked."""
    arch, model_cfg = resolve_model_config(cfg.model.arch)
    siglip = cfg.loss.kind == "siglip"
    model = build_model(model_cfg, init_logit_bias=cfg.loss.init_logit_bias if siglip else None)
    if cfg.model.init_bundle:
        init = load_bundle(cfg.model.init_bundle, device="cpu", precision="fp32")
        try:
            model.load_state_dict(init.model.state_dict())
        except RuntimeError:  # PyTorch lists every mismatched tensor: one line says what to change
            raise ValueError(
                f"model.init_bundle {cfg.model.init_bundle} is a {init.meta.get('arch')!r} bundle, "
                f"which does not fit model.arch {cfg.model.arch!r}: set model.arch to match"
            ) from None
        arch, model_cfg = init.meta["arch"], init.meta["model_cfg"]
        # the bundle's own config, not model.arch's: an imported bundle may differ in what has no weights
        # (QuickGELU for OpenAI's weights), and what is trained must be what the exported bundle records
        model = build_model(model_cfg, init_logit_bias=cfg.loss.init_logit_bias if siglip else None)
        model.load_state_dict(init.model.state_dict())
    if cfg.model.lock_image:  # open_clip's own tower locking: frozen weights and BatchNorm statistics
        model.lock_image_tower(unlocked_groups=cfg.model.lock_image_unlocked_groups, freeze_bn_stats=True)
    if cfg.model.lock_text:
        model.lock_text_tower(unlocked_layers=cfg.model.lock_text_unlocked_layers, freeze_layer_norm=True)
    if cfg.train.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model, arch, model_cfg


def training_batches(
    cfg: Config, model_cfg: dict[str, Any], rt: Runtime, data_state: DataState
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (images [B, 3, H, W] float on the device, texts [B, L]) of this rank, from where `data_state`
    left off; `data_state` follows every batch taken."""
    pp = preprocess_cfg(model_cfg)
    spec = StreamSpec.from_config(cfg.data, cfg.train.seed, rt.info.rank, rt.info.world_size, data_state)
    stream = ShardStream(
        spec,
        TrainTransform(pp["image_size"], pp["interpolation"]),
        get_tokenizer(tokenizer_cfg(model_cfg)),
        cfg.train.batch_size,
        draft_size=draft_size(pp),
    )
    normalize = normalizer(pp, rt.device)
    for batch in make_loader(stream, cfg.data.workers):
        data_state.update(batch)
        images = normalize(batch["image"].to(rt.device, non_blocking=True))  # uint8 -> float [B, 3, H, W]
        yield images.contiguous(memory_format=rt.memory_format), batch["text"].to(rt.device, non_blocking=True)
