"""Atomic checkpoints: write a temp file, fsync, rename; keep the last K; resume from the newest valid one.

A checkpoint holds only tensors and plain Python values, so it loads with `torch.load(weights_only=True)`.
A `kill -9` at any moment leaves either the previous checkpoints or a complete new one, plus at worst a
stray `*.tmp` file that is ignored and cleaned up.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipforge.encoders.model import weights_format

log = logging.getLogger(__name__)
CKPT_RE = re.compile(r"^step-(\d{8})\.pt$")


def ckpt_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    d = ckpt_dir(run_dir)
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if CKPT_RE.match(p.name)), key=lambda p: p.name)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": repr(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import ast

    py = ast.literal_eval(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, payload: dict[str, Any], keep: int) -> Path:
    d = ckpt_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"step-{step:08d}.pt"
    tmp = d / f".step-{step:08d}.pt.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    dir_fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return final


def set_aside_later(run_dir: Path, step: int) -> Path | None:
    """Move the checkpoints newer than `step` (a branch abandoned by resuming from an older one) into
    checkpoints/abandoned-after-STEP[.N]/: kept, but no longer what `--resume auto` picks, nor what pruning
    to `train.keep_ckpts` keeps in place of the new branch's. Returns that folder, or None if none was newer."""
    later = [p for p in list_checkpoints(run_dir) if p.name > f"step-{step:08d}.pt"]  # fixed-width step numbers
    if not later:
        return None
    base = ckpt_dir(run_dir) / f"abandoned-after-{step:08d}"
    dest, n = base, 1
    while dest.exists():
        dest, n = base.with_name(f"{base.name}.{n}"), n + 1
    dest.mkdir()
    for p in later:
        os.replace(p, dest / p.name)
    log.warning("resumed at step %d: the %d later checkpoint(s) are set aside in %s", step, len(later), dest)
    return dest


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's payload; ValueError (one line) for a file that is not a complete clipforge checkpoint."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no checkpoint file {path}")
    if weights_format(path) != "torch":
        raise ValueError(f"{path} is not a readable checkpoint (not a PyTorch file, by its first bytes)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:  # unreadable, not damaged: said as such (the command names the path's argument)
        raise
    except Exception as exn:  # truncated, not a checkpoint, or a pickle that needs more than tensors
        reason = " ".join(str(exn).split())[:160] or type(exn).__name__
        raise ValueError(f"{path} is not a readable checkpoint ({type(exn).__name__}: {reason})") from None
    if not isinstance(payload, dict) or "model" not in payload or "step" not in payload:
        raise ValueError(f"{path} is not a clipforge checkpoint (no model state and step)")
    return payload


def latest_valid_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """Newest checkpoint that loads completely; damaged ones are reported and skipped."""
    for stray in ckpt_dir(run_dir).glob(".*.tmp") if ckpt_dir(run_dir).is_dir() else []:
        stray.unlink(missing_ok=True)
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path)
        except Exception as exn:  # truncated or corrupt: fall back to an older one
            log.warning("checkpoint %s is unreadable (%s); trying an older one", path, exn)
    return None
