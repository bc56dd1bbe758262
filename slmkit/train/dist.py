"""torchrun integration: process group, DDP / FSDP2 wrapping, cross-rank averages.

Under torchrun (WORLD_SIZE > 1) each rank builds the same model from the same seed, reads its slice
of the same global batch, and DDP averages gradients, so the loss curve equals a one-process run at
the same global batch (up to float summation order).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            tdist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            value = value.detach().clone()
            tdist.all_reduce(value, op=tdist.ReduceOp.SUM)
            value /= self.world
        return value

    def any(self, flag: bool) -> bool:
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def close(self) -> None:
        if self.owns_group and tdist.is_initialized():
            tdist.destroy_process_group()


def init(device_pref: str = "auto") -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    owns = False
    if world > 1 and not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns = True
    if world > 1:
        rank, world = tdist.get_rank(), tdist.get_world_size()
    return Dist(rank, world, local, device, owns)


def wrap(model: torch.nn.Module, dist: Dist, strategy: str) -> torch.nn.Module:
    """The module to call for forward/backward (the raw model when single-process)."""
    if not dist.enabled:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.layers:
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None)
