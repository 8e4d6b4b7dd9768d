"""The process group, when torchrun started several processes: who this process is, and how the
processes agree (barriers, a shared stop flag)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from exaug.device import launcher_variable, resolve_device


@dataclass(frozen=True)
class World:
    """This process's place among ``size`` processes (a world of one without torchrun)."""

    rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes every file of the run; the others only train."""
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str) -> World:
        """Join torchrun's process group (``WORLD_SIZE`` > 1): NCCL with one GPU per process on CUDA,
        gloo on CPU. Without torchrun, a world of one on ``device``."""
        size = launcher_variable("WORLD_SIZE", 1, minimum=1)
        resolved = resolve_device(device)
        if size == 1:
            return cls(0, 1, resolved)
        if resolved.type == "cuda":
            resolved = torch.device("cuda", launcher_variable("LOCAL_RANK", 0, minimum=0))
            torch.cuda.set_device(resolved)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), resolved)

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when any rank says so, so all stop at the same step."""
        if self.size == 1:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def close(self) -> None:
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def unwrap(module: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper, or ``module`` itself."""
    return module.module if isinstance(module, DistributedDataParallel) else module
