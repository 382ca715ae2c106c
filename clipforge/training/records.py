"""A run's records: metrics.jsonl (the source of truth: one JSON line per log or evaluation step), mirrored
to TensorBoard, and what becomes of an earlier run's records when a run starts afresh or resumes, so that the
report never draws two runs, or one stretch of steps twice, as one curve."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from clipforge.training.checkpoint import ckpt_dir

log = logging.getLogger(__name__)


class MetricsLog:
    """Appends one JSON line per record, and mirrors scalars to TensorBoard if installed. `resumed_at` > 0:
    TensorBoard hides the events a killed run wrote after that step (the resumed run writes them again)."""

    def __init__(self, path: Path, enabled: bool, resumed_at: int = 0) -> None:
        self.path, self.enabled, self.tb = path, enabled, None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                purge = {"purge_step": resumed_at + 1} if resumed_at else {}
                self.tb = SummaryWriter(str(path.parent / "tensorboard"), **purge)
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


def set_aside(run_dir: Path) -> int | None:
    """Rename an earlier run's metrics.jsonl, tensorboard/, checkpoints/, config.yaml and bundle/ to
    metrics.N.jsonl, tensorboard.N, checkpoints.N, config.N.yaml and bundle.N (the first N free for all) and
    return N. A run that starts at step 0 (afresh, or `--resume auto` that found no readable checkpoint) must
    not append to or overwrite the run before it: the report would draw both as one, keeping the last K
    checkpoints by name would delete the new run's own (the old run's higher step numbers sort after them)
    and hand a later `--resume auto` the old run's, and the old config and bundle would be replaced."""
    records = [
        run_dir / "metrics.jsonl",
        run_dir / "tensorboard",
        ckpt_dir(run_dir),
        run_dir / "config.yaml",
        run_dir / "bundle",
    ]
    old = [p for p in records if (p.is_file() and p.stat().st_size) or (p.is_dir() and any(p.iterdir()))]
    if not old:
        return None

    def numbered(path: Path, n: int) -> Path:
        return path.with_name(f"{path.stem}.{n}{path.suffix}")  # metrics.1.jsonl, tensorboard.1, bundle.1

    n = 1
    while any(numbered(p, n).exists() for p in records):
        n += 1
    for path in old:
        path.rename(numbered(path, n))
    kept = ", ".join(numbered(p, n).name for p in old)
    log.warning("%s held an earlier run's records: kept as %s (this run starts from step 0)", run_dir, kept)
    return n


def rewind(path: Path, step: int, continuing: bool = True) -> int:
    """Resuming from a checkpoint at `step`: drop the records the interrupted run wrote after it, which the
    resumed run writes again, and a line torn by a crash; returns how many. A final evaluation AT `step` is
    kept as an ordinary one when the run goes on (`continuing`) and dropped when it ends there (it is
    evaluated again). The file is rewritten whole and swapped in: a crash here leaves the old file."""
    if not path.is_file():
        return 0
    text = path.read_text()
    kept, dropped, redone = [], 0, 0  # redone: the final evaluation at `step` of a run that ends there
    for line in text.splitlines():
        try:
            record = json.loads(line)
            stale = record["step"] > step
            redo = record["step"] == step and bool(record.get("final")) and not continuing
        except (ValueError, KeyError, TypeError):  # torn by a crash mid-write, or not a record at all
            record, stale, redo = None, bool(line.strip()), False
        if stale or redo:
            dropped, redone = dropped + stale, redone + redo
        elif record is not None and record.get("final"):  # the run goes on past it: no longer its last word
            kept.append(json.dumps({k: v for k, v in record.items() if k != "final"}))
        elif line.strip():
            kept.append(line)
    rewritten = "".join(f"{line}\n" for line in kept)
    if rewritten != text:  # also a last line left without its newline: the next record would join it
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(rewritten)
        os.replace(tmp, path)
    if dropped:  # work the interrupted run did and lost (a finished run evaluated again is routine: silent)
        log.warning("%s: resuming at step %d, dropped %d record(s) written after it", path, step, dropped)
    return dropped + redone
