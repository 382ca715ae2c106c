"""Device and precision helpers.

Training: bf16 autocast is only used on CPU when this CPU runs bf16 matmuls fast (AMX / AVX512-BF16): on
plain AVX2 machines PyTorch emulates bf16 and it is ~100x slower than fp32, so "auto" measures before choosing.
Where the matmul is fast, the trainer then times the model's own step in both (clipforge.training.precision).

Inference on CPU ("auto" for a loaded bundle) is always fp32: under bf16 autocast an image's embedding depends
on which other images share its batch (~1e-3 apart, as oneDNN blocks the matmuls differently per batch shape)
and on a timing measurement, so an index built in one process and queried from another would not give an
image back its own vector. fp32 is also what the ONNX Runtime backend computes.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return dev


@functools.lru_cache(maxsize=1)
def cpu_bf16_is_fast() -> bool:
    """True when a bf16 matmul on this CPU is faster than fp32 (measured once, ~0.1 s)."""
    a = torch.randn(256, 256)

    def timed(x: torch.Tensor) -> float:
        x @ x  # warm-up
        t0 = time.perf_counter()
        for _ in range(4):
            x @ x
        return time.perf_counter() - t0

    fp32 = timed(a)
    bf16 = timed(a.to(torch.bfloat16))
    return bf16 < fp32 * 0.8


def resolve_precision(precision: str, device: torch.device, *, training: bool = True) -> str:
    """The precision "auto" stands for: bf16/fp16 on CUDA; on CPU bf16 for training where it is fast, fp32 for
    inference (`training=False`, see the module docstring)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 (with GradScaler) is for CUDA; use bf16 or fp32 on CPU")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if training and cpu_bf16_is_fast() else "fp32"


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        with torch.autocast(device.type, dtype=dtype):
            yield
    else:
        yield
