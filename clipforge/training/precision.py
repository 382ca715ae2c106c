"""`precision: auto` on a CPU: time this model's own training step under fp32 and bf16 and keep the faster.

`resolve_precision` first asks whether a bf16 matmul is fast on this CPU at all (AMX / AVX512-BF16; on plain
AVX2 it is emulated, ~100x slower, and nothing more is measured). A fast matmul does not make a fast step:
autocast adds a cast per op, and on a small model those casts cost more than the matmuls save. On an AMX
Xeon the 256x256 matmul probe ran faster in bf16 while cf-tiny-vit trained at 240-280 samples/s under bf16
against 440-470 in fp32. So where the matmul says yes, the step itself decides.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from typing import Any

import torch

from clipforge.encoders.device import autocast
from clipforge.encoders.model import preprocess_cfg, tokenizer_cfg
from clipforge.training.setup import Runtime

log = logging.getLogger(__name__)

BF16_MARGIN = 0.8  # bf16 must take at most this fraction of fp32's step time to be chosen
PROBE_BATCH = 16
PROBE_ROUNDS = 3  # timed rounds after one warm-up, fp32 and bf16 alternating


def step_seconds(
    model: torch.nn.Module,
    model_cfg: dict[str, Any],
    batch: int = PROBE_BATCH,
    rounds: int = PROBE_ROUNDS,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> dict[str, float]:
    """{"fp32": s, "bf16": s}: the fastest of `rounds` forward + backward passes of a copy of `model` on a
    random batch of `batch` images and texts, the two precisions alternating (the fastest: another process
    on the cores only ever slows a round down). The model, its gradients, its buffers (BatchNorm
    statistics) and the global random state are left as they were."""
    size = int(preprocess_cfg(model_cfg)["image_size"])
    length = int(tokenizer_cfg(model_cfg)["context_length"])
    vocab = int(model_cfg.get("text_cfg", {}).get("vocab_size", 49408))
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=gen).contiguous(memory_format=memory_format)
    texts = torch.randint(1, vocab, (batch, length), generator=gen)
    probe = copy.deepcopy(model).train().to(memory_format=memory_format)
    cpu = torch.device("cpu")
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    with torch.random.fork_rng(devices=[]):
        for r in range(rounds + 1):
            for precision in ("fp32", "bf16"):
                t0 = time.perf_counter()
                with autocast(cpu, precision):
                    out = (
                        probe.encode_image(images).float().square().mean()
                        + probe.encode_text(texts).float().square().mean()
                    )
                if out.requires_grad:  # (both towers locked: nothing to train, the forward is the step)
                    out.backward()
                if r:  # round 0 warms up (first-call kernel creation)
                    times[precision].append(time.perf_counter() - t0)
                probe.zero_grad(set_to_none=True)
    return {p: min(t) for p, t in times.items()}


def faster(times: dict[str, float]) -> str:
    return "bf16" if times["bf16"] <= BF16_MARGIN * times["fp32"] else "fp32"


def settle_cpu_precision(
    requested: str, rt: Runtime, model: torch.nn.Module, model_cfg: dict[str, Any], resumed: str | None = None
) -> Runtime:
    """`rt` with the precision this model trains faster in, where `requested` is "auto" on a CPU (else `rt`
    unchanged). The step is timed only where the CPU's bf16 matmuls are fast (`rt.precision` is then bf16);
    a resumed run keeps the precision it started in (`resumed`, from its checkpoint) unless that is bf16 on a
    CPU whose bf16 matmuls are slow. Under torchrun every rank takes rank 0's choice: the ranks' own
    measurements may disagree, so every rank reaches the broadcast, whatever it measured."""
    if requested != "auto" or rt.device.type != "cpu":
        return rt
    if resumed == "fp32" or (resumed == "bf16" and rt.precision == "bf16"):
        choice, measured = resumed, "the precision of the run it resumes"
    elif rt.precision == "bf16":
        try:
            times = step_seconds(model, model_cfg, memory_format=rt.memory_format)
            choice = faster(times)
            measured = f"a training step takes {times['bf16']:.3f} s in bf16, {times['fp32']:.3f} s in fp32 here"
        except RuntimeError as exn:  # e.g. an op of this model with no bf16 CPU kernel: fp32 always works
            choice, measured = "fp32", f"the bf16 step failed ({' '.join(str(exn).split())[:200]})"
            log.warning("precision auto: %s -> fp32", measured)
    else:
        choice, measured = "fp32", "bf16 matmuls are not fast on this CPU"
    if rt.info.enabled:
        flag = torch.tensor([choice == "bf16"], dtype=torch.int64)
        torch.distributed.broadcast(flag, src=0)
        choice = "bf16" if flag.item() else "fp32"
    log.info("precision auto: %s -> %s", measured, choice)
    return dataclasses.replace(rt, precision=choice)
