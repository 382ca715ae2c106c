import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clipforge.training.checkpoint import latest_valid_checkpoint, list_checkpoints
from tests.training.test_step import sgd_step

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("accum", [1, 2])
def test_two_process_gloo_step_equals_single_process(tmp_path, accum):
    """torchrun, 2 CPU processes x 8 samples == 1 process x 16 samples: same loss, same updated weights.

    With accum=2 each rank splits its 8 samples into 2 micro-batches of 4 (feature-cached accumulation
    under DDP): the update must still equal the single process's one batch of 16. Tolerance: atol 2e-6 / rtol 1e-5 on weights after an SGD step with lr 1 (i.e. on the gradients)."""
    out = tmp_path / "ddp.pt"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "tests" / "training" / "ddp_step.py"),
        str(out),
        str(accum),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)
    assert ddp["skipped"] == {"no_caption": 3, "only_on_rank_0": 1, "only_on_rank_1": 1}  # summed over ranks
    loss, state = sgd_step(accum=1)
    assert abs(float(ddp["loss"]) - loss) < 1e-5
    for name, w in state.items():
        torch.testing.assert_close(ddp["state"][name], w, atol=2e-6, rtol=1e-5, msg=name)


@pytest.mark.slow
def test_torchrun_training_run_with_accumulation_evaluates_checkpoints_and_exports_once(synth_data, tmp_path):
    """`clipforge train` under torchrun (2 gloo ranks, accum 2): no deadlock at evaluation or the end of the
    data, one writer (rank 0) for metrics, checkpoints and the bundle."""
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "clipforge",
        "train",
        "smoke",
        "--set",
        f"out_dir={run}",
        "--set",
        f"data.train=['{synth_data['train']}']",
        "--set",
        f"data.val={synth_data['val']}",
        "--set",
        f"data.zeroshot={synth_data['zeroshot']}",
        "--set",
        "train.accum=2",
        "--set",
        "train.samples=320",
        "--set",
        "eval.every=6",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 10  # 320 samples / global batch 32, logged once each
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in evals] == [6, 10]  # mid-run and final, by rank 0 only
    meta = json.loads((run / "bundle" / "bundle.json").read_text())
    assert meta["provenance"]["samples_seen"] == 320
    assert list_checkpoints(run) and latest_valid_checkpoint(run) is not None
