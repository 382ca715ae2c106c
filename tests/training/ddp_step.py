"""Run by test_distributed.py under torchrun: one train_step on this rank's half of a fixed global batch."""

import sys
from collections import Counter

import torch
import torch.distributed as dist

from clipforge.training.distributed import init_distributed
from clipforge.training.loop import skipped_all_ranks
from clipforge.training.state import TrainState
from clipforge.training.step import train_step
from tests.training.test_step import make_batch, make_model, step_cfg

out_path, accum = sys.argv[1], int(sys.argv[2])
info = init_distributed("cpu")
model = make_model()
ddp = torch.nn.parallel.DistributedDataParallel(model)
opt = torch.optim.SGD(model.parameters(), lr=1.0)
images, texts = make_batch(16)
half = slice(info.rank * 8, (info.rank + 1) * 8)
state = TrainState(model, ddp, opt, torch.amp.GradScaler("cpu", enabled=False))
loss = train_step(state, images[half], texts[half], step_cfg(info, accum)).loss
dist.all_reduce(loss)  # global loss = mean over ranks of each rank's local-rows loss
state.data.base_stats = Counter({"no_caption": info.rank + 1, f"only_on_rank_{info.rank}": 1})
skipped = skipped_all_ranks(state, info)  # what the log and the summary report: every rank's skips
if info.rank == 0:
    torch.save({"loss": loss / info.world_size, "state": model.state_dict(), "skipped": skipped}, out_path)
dist.barrier()
dist.destroy_process_group()
