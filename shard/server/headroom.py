"""Measured memory headroom of this rank (chameleon.v1.Headroom), attached to every reply.

free_device_bytes is measured (shard/server/free_memory.py): CUDA `mem_get_info` plus what torch's
caching allocator holds unused; CPU the cgroup's limit minus its usage where a limit is set, else the
host's MemAvailable. `DeviceMemory(measured=False)` keeps the older CPU rule, `--memory-budget` minus
the serving tensors' bytes (tests that need a machine-independent number). resident_bytes is the
rank's own: VmRSS on CPU, bytes torch reserved on CUDA. Pool pages: KV pages = blocks referenced by
cached batches (+ page 0, reserved for liveness); adapter pages = pages of resident adapters;
allocated pages / bytes and the segment size come from the elastic pool (shard.model.pool).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from chameleon_pb import chameleon_pb2

from shard.server.free_memory import FreeMemory, FreeMemoryProbe


@dataclass(frozen=True, slots=True)
class DeviceMemory:
    """How this rank measures its device: CUDA device, or CPU with a byte budget for the pool size."""

    device: torch.device
    budget_bytes: int
    measured: bool = True
    probe: FreeMemoryProbe | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.probe is None:
            object.__setattr__(self, "probe", FreeMemoryProbe(torch.device(self.device)))

    def measure(self, used_bytes: int) -> tuple[FreeMemory, int]:
        """(free memory, this process's resident bytes). `used_bytes`: serving tensors held on CPU
        (only for the unmeasured budget rule)."""
        assert self.probe is not None
        if self.device.type != "cuda" and not self.measured:
            free = FreeMemory(max(self.budget_bytes - used_bytes, 0), self.budget_bytes, "budget")
            return free, used_bytes
        return self.probe.measure()

    def free_and_total(self, used_bytes: int) -> tuple[int, int]:
        free, _ = self.measure(used_bytes)
        return free.free_bytes, free.total_bytes


def measure_headroom(mem: DeviceMemory, rank: int, num_pages: int, page_bytes: int,
                     kv_blocks: Iterable[int], adapters: list[Any],
                     used_bytes: int, pool: Any = None) -> chameleon_pb2.Headroom:
    free, resident = mem.measure(used_bytes)
    kv = len(set(kv_blocks) | ({0} if num_pages else set()))
    adapter_pages = sum(len(a.pages) for a in adapters)  # adapters never share pages with KV or each other
    allocated = pool.allocated_pages if pool is not None else num_pages
    return chameleon_pb2.Headroom(
        rank=rank, free_device_bytes=free.free_bytes, total_device_bytes=free.total_bytes,
        pool_pages_total=num_pages, pool_pages_used=kv + adapter_pages, kv_pages_used=kv,
        adapter_pages_used=adapter_pages, page_bytes=page_bytes, resident_adapters=len(adapters),
        resident_bytes=resident, pool_pages_allocated=allocated, pool_allocated_bytes=allocated * page_bytes,
        segment_pages=pool.segment_pages if pool is not None else 0, free_source=free.source)
