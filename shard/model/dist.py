"""DistContext: the only place that talks to torch.distributed.

Model files call `dist.all_reduce(x)` / `dist.all_gather(x, sizes)`; with world_size == 1 these are
no-ops and torch.distributed is never initialised. Process-group backend (`process_group_backend`, the one
place it is chosen): gloo on CPU; nccl on CUDA when every rank of the host has a GPU of its own; gloo
when ranks share GPUs (nccl refuses two ranks on one device; two ranks on one GPU is how TP is tested on a
one-GPU machine), its collectives then staged through host memory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True, slots=True)
class DistContext:
    """This process's place in the tensor-parallel group."""

    rank: int = 0
    world_size: int = 1
    group: Any = None  # torch.distributed ProcessGroup, None when world_size == 1
    host_staged: bool = False  # gloo under CUDA tensors: collectives copy through host memory

    @classmethod
    def single(cls) -> DistContext:
        return cls()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None,
                 device: str | torch.device = "cpu") -> DistContext:
        """Init from RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT (as torchrun sets them).

        WORLD_SIZE absent or 1 gives a single-process context without torch.distributed.
        """
        env = os.environ if env is None else env
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        if world <= 1:
            return cls()
        if not 0 <= rank < world:
            raise ValueError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
        addr, port = env.get("MASTER_ADDR", "127.0.0.1"), env.get("MASTER_PORT", "29500")
        local = int(env.get("LOCAL_WORLD_SIZE", str(world)))
        return cls.init(rank, world, f"tcp://{addr}:{port}", device, local_world=local)

    @classmethod
    def init(cls, rank: int, world_size: int, init_method: str, device: str | torch.device = "cpu",
             local_world: int | None = None) -> DistContext:
        """`local_world`: ranks on this host (default world_size: one host)."""
        if world_size <= 1:
            return cls()
        import torch.distributed as tdist

        dev = torch.device(device)
        count = torch.cuda.device_count() if dev.type == "cuda" else 0
        backend = process_group_backend(dev, local_world or world_size, count)
        if dev.type == "cuda" and dev.index is not None:
            torch.cuda.set_device(dev)  # nccl binds each rank to its current device
        if not tdist.is_initialized():
            tdist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size)
        return cls(rank=rank, world_size=world_size, group=tdist.group.WORLD,
                   host_staged=backend == "gloo" and dev.type == "cuda")

    @property
    def is_single(self) -> bool:
        return self.world_size == 1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum x over ranks, in place; returns x."""
        if self.world_size > 1:
            import torch.distributed as tdist

            if self.host_staged and x.device.type != "cpu":
                staged = x.cpu()
                tdist.all_reduce(staged, group=self.group)
                x.copy_(staged)
            else:
                tdist.all_reduce(x, group=self.group)
        return x

    def all_gather(self, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Concatenate along the last dim the per-rank x ([..., sizes[rank]]); uneven sizes allowed."""
        if self.world_size == 1:
            return x
        import torch.distributed as tdist

        width, device = max(sizes), x.device
        if self.host_staged:
            x = x.cpu()
        if x.shape[-1] < width:
            x = torch.nn.functional.pad(x, (0, width - x.shape[-1]))
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        tdist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat([p[..., :n] for p, n in zip(parts, sizes, strict=True)], dim=-1).to(device)

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as tdist

            tdist.barrier(group=self.group)

    def shutdown(self) -> None:
        if self.world_size > 1:
            import torch.distributed as tdist

            if tdist.is_initialized():
                tdist.destroy_process_group()


def process_group_backend(device: torch.device, local_world: int, device_count: int) -> str:
    """nccl when the ranks run on CUDA and each of the `local_world` ranks of this host can have a device
    of its own (`device_count` of them), else gloo. Every rank of a host computes the same answer."""
    if device.type == "cuda" and device_count >= local_world:
        return "nccl"
    return "gloo"
