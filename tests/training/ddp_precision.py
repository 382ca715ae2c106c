"""Run by test_precision.py under torchrun: each rank's probe says something else; all must train alike."""

import sys

import torch
import torch.distributed as dist

from clipforge.training import precision
from clipforge.training.distributed import init_distributed
from clipforge.training.setup import Runtime

out_dir = sys.argv[1]
info = init_distributed("cpu")
# rank 0 measures bf16 as twice as fast, rank 1 as twice as slow (timings on a shared CPU can disagree so)
times = {"fp32": 1.0, "bf16": 0.5} if info.rank == 0 else {"fp32": 1.0, "bf16": 2.0}
precision.step_seconds = lambda *a, **k: times
# and rank 1's matmul probe said bf16 is slow here, so it does not time the step at all: it must still join
# rank 0's broadcast (it once returned early, and the run hung)
rt = Runtime(torch.device("cpu"), "bf16" if info.rank == 0 else "fp32", info, torch.contiguous_format)
chosen = precision.settle_cpu_precision("auto", rt, torch.nn.Linear(1, 1), {}).precision
with open(f"{out_dir}/rank{info.rank}.txt", "w") as f:
    f.write(chosen)
dist.barrier()
dist.destroy_process_group()
