"""Run open_clip's own trainer (`python -m open_clip_train.main`) beside ours, on the same data and model.

open_clip_train needs `webdataset<=0.2.86` (and pandas) while clipforge uses webdataset 1.x, so the peer runs
in a separate environment: the same interpreter and PyTorch, with an overlay directory (pip --target) put
first on PYTHONPATH holding webdataset 0.2.86 and pandas, and a sitecustomize.py that registers clipforge's
shipped model configs with open_clip so both trainers build the identical architecture.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache"


def prepare_peer_env() -> dict[str, str]:
    overlay = CACHE / "openclip-overlay"
    if not (overlay / "webdataset").is_dir():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--target",
                str(overlay),
                "webdataset==0.2.86",
                "pandas",
                "braceexpand",
            ],
            check=True,
        )
    (overlay / "sitecustomize.py").write_text(
        "import open_clip, pathlib\n"
        f"for p in pathlib.Path({str(ROOT / 'clipforge' / 'encoders' / 'configs')!r}).glob('*.json'):\n"
        "    open_clip.add_model_config(p)\n"
    )
    return {**os.environ, "PYTHONPATH": f"{overlay}{os.pathsep}{ROOT}", "PYTHONUNBUFFERED": "1"}


def ensure_data(n_train: int = 20_000) -> dict:
    from clipforge.training.synth import write_synth

    root = CACHE / f"synth-{n_train}"
    if not (root / "synth.json").is_file():
        write_synth(root, train=n_train, val=1000, per_class=20)
    return json.loads((root / "synth.json").read_text())


BATCH_T = re.compile(r"Batch \(t\): ([0-9.]+)")


def run_openclip(
    data: dict,
    *,
    out: Path,
    arch: str,
    samples: int,
    batch: int,
    lr: float,
    wd: float,
    warmup: int,
    workers: int,
    seed: int,
    env: dict[str, str],
) -> dict:
    """Train with open_clip_train; returns steady-state samples/s and the final checkpoint path."""
    name = f"{arch}-s{seed}-{int(time.time() * 1000)}"
    cmd = [
        sys.executable,
        "-m",
        "open_clip_train.main",
        "--model",
        arch,
        "--train-data",
        data["train"],
        "--dataset-type",
        "webdataset",
        "--train-num-samples",
        str(samples),
        "--epochs",
        "1",
        "--batch-size",
        str(batch),
        "--lr",
        str(lr),
        "--wd",
        str(wd),
        "--warmup",
        str(warmup),
        "--beta1",
        "0.9",
        "--beta2",
        "0.98",
        "--eps",
        "1e-6",
        "--grad-clip-norm",
        "1.0",
        "--workers",
        str(workers),
        "--precision",
        "fp32",
        "--seed",
        str(seed),
        "--logs",
        str(out),
        "--name",
        name,
        "--save-frequency",
        "1",
        "--zeroshot-frequency",
        "0",
        "--val-frequency",
        "0",
        "--report-to",
        "",
        "--log-every-n-steps",
        "10",
        "--device",
        "cpu",
    ]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=out)
    wall = time.perf_counter() - t0
    log = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"open_clip_train failed:\n{log[-3000:]}")
    batch_times = [float(x) for x in BATCH_T.findall(log)]
    steady = batch_times[1:] or batch_times  # the first window includes start-up
    ckpt = next((out / name / "checkpoints").glob("epoch_*.pt"))
    return {"samples_per_s": batch / statistics.median(steady), "wall_s": wall, "checkpoint": ckpt}


def run_ours(
    data: dict,
    *,
    out: Path,
    arch: str,
    samples: int,
    batch: int,
    lr: float,
    wd: float,
    warmup: int,
    workers: int,
    seed: int,
    precision: str = "fp32",
    extra: tuple[str, ...] = (),
    root: Path = ROOT,
) -> dict:
    """Train with `clipforge train` from the checkout at `root` (this one by default)."""
    run = out / f"ours-{arch}-s{seed}-{int(time.time() * 1000)}"
    sets = [
        f"out_dir={run}",
        f"model.arch={arch}",
        f"data.train=['{data['train']}']",
        "data.val=null",
        "data.zeroshot=null",
        f"train.samples={samples}",
        f"train.batch_size={batch}",
        f"optim.lr={lr}",
        f"optim.weight_decay={wd}",
        f"optim.warmup_steps={warmup}",
        f"data.workers={workers}",
        f"train.seed={seed}",
        f"train.precision={precision}",
        "train.log_every=10",
        "train.ckpt_every=0",
        "data.sample_shuffle=2000",
        *extra,
    ]
    cmd = [sys.executable, "-m", "clipforge", "train", "smoke"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)}, cwd=root)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"clipforge train failed:\n{done.stderr[-3000:]}")
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in records if "samples_per_s" in r]
    steady = rates[1:-1] or rates  # drop the start-up window and the short last one
    return {"samples_per_s": statistics.median(steady), "wall_s": wall, "bundle": run / "bundle"}
