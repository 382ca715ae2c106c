"""torchrun support: process-group setup and feature gathering that keeps gradients."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        # rank 0 evaluates alone (zero-shot on an ImageNet-sized folder can take longer than NCCL's 10-minute
        # default) while the other ranks wait in the next collective: give them room, not a killed job
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    if device_type == "cuda":
        torch.cuda.set_device(local)
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def gather_with_grad(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """[B, D] per rank -> [world*B, D]; backward sends each rank the gradient of its own rows."""
    if not info.enabled:
        return x
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x), dim=0)
