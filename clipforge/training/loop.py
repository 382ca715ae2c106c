"""The training loop: one visible loop counted in steps."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from clipforge.encoders.backends import TorchEncoder
from clipforge.encoders.bundle import save_bundle
from clipforge.encoders.model import Preprocess, eval_preprocess, get_tokenizer, preprocess_cfg, tokenizer_cfg
from clipforge.training.checkpoint import set_aside_later
from clipforge.training.config import Config, save_config
from clipforge.training.distributed import DistInfo
from clipforge.training.evaluate import retrieval_eval, zeroshot_eval
from clipforge.training.loss import FiniteWatch
from clipforge.training.optim import lr_at, set_lr
from clipforge.training.precision import settle_cpu_precision
from clipforge.training.records import MetricsLog, rewind, set_aside
from clipforge.training.setup import Runtime, build_training_model, check_inputs, training_batches
from clipforge.training.state import Checkpointer, TrainState, find_checkpoint
from clipforge.training.step import StepCfg, StepOut, train_step

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


def train(cfg: Config, resume: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train per `cfg`; `resume` is None, "auto" (newest valid checkpoint of the run, if any) or a path."""
    env = os.environ  # torchrun's, read before the process group exists
    check_inputs(cfg, world_size=int(env.get("WORLD_SIZE", "1")), rank=int(env.get("RANK", "0")))
    rt = Runtime.from_config(cfg)
    run_dir = Path(cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model, arch, model_cfg = build_training_model(cfg)
    resume_from = find_checkpoint(run_dir, resume)
    resumed = str(resume_from[1].get("precision", "")) if resume_from else None
    rt = settle_cpu_precision(cfg.train.precision, rt, model, model_cfg, resumed=resumed)
    state = TrainState.create(model, cfg, rt, resume_from)
    checkpointer = Checkpointer(
        run_dir, cfg, rt.info, {"arch": arch, "model_cfg": model_cfg, "precision": rt.precision}
    )
    global_batch = cfg.train.batch_size * rt.info.world_size
    total_steps = max(1, cfg.train.samples // global_batch)
    if rt.info.is_main:
        if state.step == 0:  # before anything is written: the earlier run's files are moved, not overwritten
            set_aside(run_dir)
        else:
            rewind(run_dir / "metrics.jsonl", state.step, continuing=state.step < total_steps)
            set_aside_later(run_dir, state.step)  # resumed from an older checkpoint: its later ones are another branch
        save_config(cfg, run_dir / "config.yaml")
    batches = training_batches(cfg, model_cfg, rt, state.data)
    step_cfg = StepCfg.from_config(cfg, rt)
    metrics = MetricsLog(run_dir / "metrics.jsonl", rt.info.is_main, resumed_at=state.step)
    encoder = as_encoder(model, model_cfg, rt.device, rt.precision)
    preprocess = eval_preprocess(preprocess_cfg(model_cfg))
    watch, meter = FiniteWatch(rt.device, state.step), Throughput()
    bar = tqdm(total=total_steps, initial=state.step, disable=not (progress and rt.info.is_main), unit="step")
    model.train()
    while state.step < total_steps:
        images, texts = next(batches)
        lr = lr_at(state.step, cfg.optim.lr, cfg.optim.warmup_steps, total_steps)
        set_lr(state.optimizer, lr)
        out = train_step(state, images, texts, step_cfg)
        watch.add(out.finite)  # no sync: the flag stays on the device until a check
        state.step += 1
        state.samples_seen += global_batch
        meter.count(global_batch)
        last = state.step == total_steps
        log_now = state.step % cfg.train.log_every == 0 or last
        ckpt_now = cfg.train.ckpt_every and state.step % cfg.train.ckpt_every == 0 and not last
        eval_now = cfg.eval.every and state.step % cfg.eval.every == 0 and not last
        if log_now or ckpt_now or eval_now:  # nothing is logged, saved or evaluated from a diverged model
            watch.check(state.step)
        if log_now:  # every rank reaches this step: the counts' gather is a collective
            metrics.write(log_record(state, out, lr, meter.rate(), bar, skipped_all_ranks(state, rt.info)))
        bar.update(1)
        if ckpt_now:
            checkpointer.save(state)
        if eval_now and rt.info.is_main:
            evaluate_and_log(cfg, encoder, preprocess, metrics, state)
            meter.restart()  # evaluation time is not training throughput
    bar.close()
    watch.check(state.step)
    checkpointer.save(state)
    skipped = skipped_all_ranks(state, rt.info)
    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "steps": state.step,
        "samples_seen": state.samples_seen,
        "skipped": skipped,
        "samples_per_s": meter.last,
        "precision": rt.precision,
    }
    if rt.info.is_main:  # the bundle first: a final evaluation that fails costs no weights
        meta = {
            "arch": arch,
            "model_cfg": model_cfg,
            "loss": cfg.loss.kind,
            "provenance": provenance(cfg, state, rt.precision, skipped),
        }
        summary.update(
            {"bundle": str(run_dir / "bundle"), "fingerprint": save_bundle(model, run_dir / "bundle", **meta)}
        )
        summary.update(evaluate_and_log(cfg, encoder, preprocess, metrics, state, final=True))
    if rt.info.enabled:
        torch.distributed.barrier()
    return summary


class Throughput:
    """Samples/s between log steps (the loop syncs with the device only there)."""

    def __init__(self) -> None:
        self.t0, self.n, self.last = time.perf_counter(), 0, 0.0

    def count(self, samples: int) -> None:
        self.n += samples

    def rate(self) -> float:
        now = time.perf_counter()
        self.last = self.n / max(now - self.t0, 1e-9)
        self.t0, self.n = now, 0
        return self.last

    def restart(self) -> None:
        self.t0 = time.perf_counter()


def skipped_all_ranks(state: TrainState, info: DistInfo) -> dict[str, int]:
    """Bad samples skipped so far by every rank (each reads its own shards); under torchrun a collective, so
    every rank calls it at the same step."""
    if not info.enabled:
        return state.data.skipped
    gathered: list[Any] = [None] * info.world_size
    torch.distributed.all_gather_object(gathered, state.data.skipped)
    total: Counter = Counter()
    for counts in gathered:
        total.update(counts)
    return dict(total)


def log_record(
    state: TrainState, out: StepOut, lr: float, rate: float, bar: tqdm, skipped: dict[str, int]
) -> dict[str, Any]:
    loss, scale = out.loss.item(), out.logit_scale.item()  # syncs with the device: only at log steps
    bar.set_postfix(
        loss=f"{loss:.3f}", scale=f"{scale:.1f}", lr=f"{lr:.1e}", sps=f"{rate:.0f}", skipped=sum(skipped.values())
    )
    return {
        "step": state.step,
        "samples_seen": state.samples_seen,
        "loss": loss,
        "logit_scale": scale,
        "lr": lr,
        "samples_per_s": rate,
        "skipped": skipped,
        "time": time.time(),
    }


def provenance(cfg: Config, state: TrainState, precision: str, skipped: dict[str, int]) -> dict[str, Any]:
    return {
        "steps": state.step,
        "precision": precision,  # what `train.precision` (perhaps "auto") resolved to
        "samples_seen": state.samples_seen,
        "data": list(cfg.data.train),
        "config": cfg.to_dict(),
        "skipped": skipped,  # every rank's
    }


def evaluate_and_log(
    cfg: Config,
    encoder: TorchEncoder,
    preprocess: Preprocess,
    metrics: MetricsLog,
    state: TrainState,
    final: bool = False,
) -> dict:
    """Evaluate and log; returns {"eval": results} or {"eval_error": reason}. Evaluation is a diagnostic: when
    it cannot be computed the run goes on (and ends with its bundle), with a warning in the log and metrics."""
    record: dict[str, Any] = {"step": state.step, "samples_seen": state.samples_seen}
    try:
        out: dict[str, Any] = {"eval": run_eval(cfg, encoder, preprocess)}
    except Exception as exn:  # noqa: BLE001 (whatever went wrong, the trained weights are kept)
        out = {"eval_error": f"evaluation failed at step {state.step}: {type(exn).__name__}: {exn}"}
        log.warning("%s", out["eval_error"])
    for warning in out.get("eval", {}).get("warnings", []):
        log.warning("evaluation at step %d: %s", state.step, warning)
    metrics.write(record | out | ({"final": True} if final else {}))
    return out
