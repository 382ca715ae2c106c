"""The training loop: one visible loop counted in steps."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from clipforge.encoders.backends import TorchEncoder
from clipforge.encoders.bundle import load_bundle, save_bundle
from clipforge.encoders.device import resolve_device, resolve_precision
from clipforge.encoders.images import draft_size
from clipforge.encoders.model import (
    Preprocess,
    build_model,
    eval_preprocess,
    get_tokenizer,
    preprocess_cfg,
    resolve_model_config,
    tokenizer_cfg,
)
from clipforge.training.augment import TrainTransform, normalizer
from clipforge.training.checkpoint import (
    latest_valid_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from clipforge.training.config import Config, save_config
from clipforge.training.data import DataState, ShardStream, StreamSpec, expand_urls, make_loader
from clipforge.training.distributed import init_distributed
from clipforge.training.evaluate import retrieval_eval, zeroshot_eval
from clipforge.training.optim import lr_at, make_optimizer, set_lr
from clipforge.training.step import train_step

log = logging.getLogger(__name__)


def as_encoder(model: torch.nn.Module, model_cfg: dict, device: torch.device, precision: str) -> TorchEncoder:
    """The model being trained as an `Encoder` for the evaluators."""
    return TorchEncoder(model, get_tokenizer(tokenizer_cfg(model_cfg)), device, precision)


def run_eval(cfg: Config, encoder: TorchEncoder, preprocess: Preprocess) -> dict[str, Any]:
    was_training = encoder.model.training
    encoder.model.eval()
    out: dict[str, Any] = {}
    try:
        if cfg.data.zeroshot:
            out.update(zeroshot_eval(encoder, preprocess, cfg.data.zeroshot, cfg.eval.templates, cfg.eval.batch_size))
        if cfg.data.val:
            out.update(
                retrieval_eval(
                    encoder,
                    preprocess,
                    cfg.data.val,
                    cfg.eval.val_samples,
                    cfg.eval.batch_size,
                    cfg.data.caption_key,
                    logit_scale=encoder.logit_scale(),
                )
            )
    finally:
        encoder.model.train(was_training)
    return out


class MetricsLog:
    """Appends one JSON line per record (the source of truth), and mirrors scalars to TensorBoard if installed."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled, self.tb = path, enabled, None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(path.parent / "tensorboard"))
            except ImportError:  # tensorboard is optional ([train] extra)
                self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            flat = {**record, **{f"eval/{k}": v for k, v in record.get("eval", {}).items()}}
            for k, v in flat.items():
                if isinstance(v, int | float) and k not in ("step", "time"):
                    self.tb.add_scalar(k, v, record["step"])
            self.tb.flush()


def train(cfg: Config, resume: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train per `cfg`; `resume` is None, "auto" (newest valid checkpoint of the run, if any) or a path."""
    device = resolve_device(cfg.train.device)
    info = init_distributed(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    precision = resolve_precision(cfg.train.precision, device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed + info.rank)
    run_dir = Path(cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    arch, model_cfg = resolve_model_config(cfg.model.arch)
    siglip = cfg.loss.kind == "siglip"
    model = build_model(model_cfg, init_logit_bias=cfg.loss.init_logit_bias if siglip else None)
    if cfg.model.init_bundle:
        init = load_bundle(cfg.model.init_bundle, device="cpu", precision="fp32")
        try:
            model.load_state_dict(init.model.state_dict())
        except RuntimeError:  # PyTorch lists every mismatched tensor: one line says what to change
            raise ValueError(f"model.init_bundle {cfg.model.init_bundle} is a {init.meta.get('arch')!r} bundle, "
                             f"which does not fit model.arch {cfg.model.arch!r}: set model.arch to match") from None  # fmt: skip
        arch, model_cfg = init.meta["arch"], init.meta["model_cfg"]
    if cfg.model.lock_image:  # open_clip's own tower locking: frozen weights and BatchNorm statistics
        model.lock_image_tower(unlocked_groups=cfg.model.lock_image_unlocked_groups, freeze_bn_stats=True)
    if cfg.model.lock_text:
        model.lock_text_tower(unlocked_layers=cfg.model.lock_text_unlocked_layers, freeze_layer_norm=True)
    if cfg.train.grad_checkpointing:
        model.set_grad_checkpointing(True)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    pp = preprocess_cfg(model_cfg)
    optimizer = make_optimizer(
        model, cfg.optim.lr, cfg.optim.weight_decay, (cfg.optim.beta1, cfg.optim.beta2), cfg.optim.eps
    )
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    global_batch = cfg.train.batch_size * info.world_size
    total_steps = max(1, cfg.train.samples // global_batch)

    step, samples_seen, data_state = 0, 0, DataState()
    if resume:
        found = latest_valid_checkpoint(run_dir) if resume == "auto" else (Path(resume), load_checkpoint(Path(resume)))
        if found:
            path, ckpt = found
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scaler.load_state_dict(ckpt["scaler"])
            set_rng_state(ckpt["rng"])
            step, samples_seen = int(ckpt["step"]), int(ckpt["samples_seen"])
            data_state = DataState.from_state_dict(ckpt["data"].get(str(info.rank)), cfg.data.workers)
            torch.manual_seed(cfg.train.seed + info.rank + 1_000_003 * step)  # fresh augmentation stream
            log.info("resumed from %s at step %d", path, step)
    ddp_model = model
    if info.enabled:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.train.compile:
        ddp_model = torch.compile(ddp_model)  # the step calls ddp_model; checkpoints save the plain model
    if info.is_main:
        save_config(cfg, run_dir / "config.yaml")

    sources = [expand_urls(s) for s in cfg.data.train]
    spec = StreamSpec(
        sources=sources,
        weights=list(cfg.data.weights) or [1.0] * len(sources),
        resampled=cfg.data.resampled,
        shard_shuffle=cfg.data.shard_shuffle,
        sample_shuffle=cfg.data.sample_shuffle,
        seed=cfg.train.seed,
        rank=info.rank,
        world_size=info.world_size,
        caption_key=cfg.data.caption_key,
        max_pixels=cfg.data.max_pixels,
        max_caption_chars=cfg.data.max_caption_chars,
        resume=data_state.positions,
        first_worker=data_state.first_worker,
    )
    if len(spec.weights) != len(sources):
        raise ValueError(f"data.weights has {len(spec.weights)} entries for {len(sources)} sources")
    stream = ShardStream(
        spec,
        TrainTransform(pp["image_size"], pp["interpolation"]),
        get_tokenizer(tokenizer_cfg(model_cfg)),
        cfg.train.batch_size,
        draft_size=draft_size(pp),
    )
    loader = make_loader(stream, cfg.data.workers)
    metrics = MetricsLog(run_dir / "metrics.jsonl", info.is_main)
    encoder, preprocess = as_encoder(model, model_cfg, device, precision), eval_preprocess(pp)
    normalize = normalizer(pp, device)

    def checkpoint() -> None:
        data_sd = {str(info.rank): data_state.state_dict(cfg.data.workers)}
        if info.enabled:  # every rank's data position goes into rank 0's file
            gathered: list[Any] = [None] * info.world_size
            torch.distributed.all_gather_object(gathered, data_sd)
            data_sd = {k: v for d in gathered for k, v in d.items()}
        if info.is_main:
            save_checkpoint(
                run_dir,
                step,
                {
                    "step": step,
                    "samples_seen": samples_seen,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": rng_state(),
                    "data": data_sd,
                    "arch": arch,
                    "model_cfg": model_cfg,
                    "loss": cfg.loss.kind,
                    "config": cfg.to_dict(),
                },
                cfg.train.keep_ckpts,
            )

    bar = tqdm(
        total=total_steps, initial=step, disable=not (progress and info.is_main), unit="step", dynamic_ncols=True
    )
    model.train()
    it = iter(loader)
    t_last, n_last = time.perf_counter(), 0
    rate = 0.0
    while step < total_steps:
        batch = next(it)
        data_state.update(batch)
        images = normalize(batch["image"].to(device, non_blocking=True))  # uint8 -> float [B, 3, H, W]
        images = images.contiguous(memory_format=memory_format)
        texts = batch["text"].to(device, non_blocking=True)  # [B, L]
        lr = lr_at(step, cfg.optim.lr, cfg.optim.warmup_steps, total_steps)
        set_lr(optimizer, lr)

        loss, scale = train_step(
            model, ddp_model, optimizer, scaler, images, texts,
            kind=cfg.loss.kind, max_scale=cfg.loss.max_logit_scale, grad_clip=cfg.optim.grad_clip,
            device=device, precision=precision, info=info, accum=cfg.train.accum, step=step,
        )  # fmt: skip
        step += 1
        samples_seen += global_batch
        n_last += global_batch

        if step % cfg.train.log_every == 0 or step == total_steps:
            now = time.perf_counter()
            rate = n_last / max(now - t_last, 1e-9)
            t_last, n_last = now, 0
            skipped = data_state.skipped
            loss_value, scale_value = loss.item(), scale.item()  # syncs with the device: only at log steps
            record = {
                "step": step,
                "samples_seen": samples_seen,
                "loss": loss_value,
                "logit_scale": scale_value,
                "lr": lr,
                "samples_per_s": rate,
                "skipped": skipped,
                "time": time.time(),
            }
            metrics.write(record)
            bar.set_postfix(
                loss=f"{loss_value:.3f}",
                scale=f"{scale_value:.1f}",
                lr=f"{lr:.1e}",
                sps=f"{rate:.0f}",
                skipped=sum(skipped.values()),
            )
        bar.update(1)
        if cfg.train.ckpt_every and step % cfg.train.ckpt_every == 0 and step < total_steps:
            checkpoint()
        if cfg.eval.every and step % cfg.eval.every == 0 and step < total_steps and info.is_main:
            metrics.write({"step": step, "samples_seen": samples_seen, "eval": run_eval(cfg, encoder, preprocess)})
            t_last = time.perf_counter()  # evaluation time is not training throughput
    bar.close()
    checkpoint()
    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "steps": step,
        "samples_seen": samples_seen,
        "skipped": data_state.skipped,
        "samples_per_s": rate,
    }
    if info.is_main:
        final_eval = run_eval(cfg, encoder, preprocess)
        metrics.write({"step": step, "samples_seen": samples_seen, "eval": final_eval, "final": True})
        fingerprint = save_bundle(
            model,
            run_dir / "bundle",
            arch=arch,
            model_cfg=model_cfg,
            loss=cfg.loss.kind,
            provenance={
                "steps": step,
                "samples_seen": samples_seen,
                "data": list(cfg.data.train),
                "config": cfg.to_dict(),
                "skipped": data_state.skipped,
            },
        )
        summary.update({"eval": final_eval, "bundle": str(run_dir / "bundle"), "fingerprint": fingerprint})
    if info.enabled:
        torch.distributed.barrier()
    return summary
