"""Where a command runs: the torch device and, under torchrun, this process's rank.

Shared by every stage (extract, train, evaluate, predict, ablate) so that ``--device``
means the same everywhere and torchrun ranks pick their own GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from expr.core.errors import ConfigError

if TYPE_CHECKING:
    import torch

DEVICE_HELP = "auto, cpu, cuda or cuda:N"


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) without it."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    """True outside torchrun and on its rank 0 (the one that prints progress)."""
    return dist_env()[0] == 0


def resolve_device(name: str, local_rank: int | None = None) -> "torch.device":
    """``auto`` -> this process's GPU when CUDA is there, else cpu; a bare ``cuda`` is the
    GPU of this rank (``cuda:<local_rank>``). Refuse names torch does not know and cuda on
    a machine without it."""
    import torch

    if local_rank is None:
        local_rank = dist_env()[2]
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {name!r} is not a device (use {DEVICE_HELP})") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is visible; use --device cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # we initialised the process group (and so tear it down)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: "torch.nn.Module", device: "torch.device") -> "torch.nn.Module":
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def all_reduce(self, tensor: "torch.Tensor") -> "torch.Tensor":
        import torch.distributed as td

        on = tensor.cuda() if td.get_backend() == "nccl" else tensor
        td.all_reduce(on)
        return on.cpu()

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as td

            td.barrier()

    def close(self) -> None:
        if self.owned:
            import torch.distributed as td

            td.destroy_process_group()
            self.owned = False


def setup_dist(backend: str | None = None, timeout: timedelta | None = None) -> Dist:
    """One process, or a torchrun rank (WORLD_SIZE > 1) joined to the process group.

    ``backend`` None picks nccl when CUDA is there, else gloo; a job that only meets at
    barriers passes "gloo" and a long ``timeout`` (ranks may finish days apart).
    """
    rank, world, local_rank = dist_env()
    if world == 1:
        return Dist()
    import torch
    import torch.distributed as td

    owned = not td.is_initialized()
    if owned:
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if timeout is None:
            td.init_process_group(backend)
        else:
            td.init_process_group(backend, timeout=timeout)
    return Dist(td.get_rank(), td.get_world_size(), local_rank, owned)


def use_device(device: "torch.device", dist: Dist) -> None:
    """Make ``device`` this rank's current CUDA device.

    NCCL collectives use the CURRENT device: left at cuda:0, every rank would meet on one
    GPU ("Duplicate GPU detected").
    """
    if device.type == "cuda" and dist.world > 1:
        import torch

        torch.cuda.set_device(device)
