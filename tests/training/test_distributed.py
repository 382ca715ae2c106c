import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training.test_step import sgd_step

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("accum", [1, 2])
def test_two_process_gloo_step_equals_single_process(tmp_path, accum):
    """torchrun, 2 CPU processes x 8 samples == 1 process x 16 samples: same loss, same updated weights.

    With accum=2 each rank splits its 8 samples into 2 micro-batches of 4 (feature-cached accumulation
    under DDP): the update must still equal the single process's one batch of 16. Tolerance: atol 2e-6 / rtol 1e-5 on weights after an SGD step with lr 1 (i.e. on the gradients)."""
    out = tmp_path / "ddp.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "training" / "ddp_step.py"), str(out), str(accum)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)
    loss, state = sgd_step(accum=1)
    assert abs(float(ddp["loss"]) - loss) < 1e-5
    for name, w in state.items():
        torch.testing.assert_close(ddp["state"][name], w, atol=2e-6, rtol=1e-5, msg=name)
