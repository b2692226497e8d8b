"""Measured memory headroom of this rank (chameleon.v1.Headroom), attached to every step reply.

CPU: the device is the `--memory-budget`, which covers what the shard allocates for serving: weights,
the page pool and adapter copies kept outside the pool (the interpreter and libraries are not counted:
their resident size varies between installs and would make the pool size irreproducible). free =
budget - those tensors' bytes, read from the live tensors. CUDA: torch's `mem_get_info` of the device.
Pool pages: KV pages = blocks referenced by cached batches (+ page 0, reserved for liveness); adapter
pages = pages of resident adapters.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from chameleon_pb import chameleon_pb2


@dataclass(frozen=True, slots=True)
class DeviceMemory:
    """How this rank measures its device: CUDA device, or a CPU byte budget."""

    device: torch.device
    budget_bytes: int

    def free_and_total(self, used_bytes: int) -> tuple[int, int]:
        """`used_bytes`: serving tensors held on CPU (ignored on CUDA, where the device is asked)."""
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            return int(free), int(total)
        return max(self.budget_bytes - used_bytes, 0), self.budget_bytes


def measure_headroom(mem: DeviceMemory, rank: int, num_pages: int, page_bytes: int,
                     kv_blocks: Iterable[int], adapters: list[object],
                     used_bytes: int) -> chameleon_pb2.Headroom:
    free, total = mem.free_and_total(used_bytes)
    kv = len(set(kv_blocks) | ({0} if num_pages else set()))
    adapter_pages = sum(len(a.pages) for a in adapters)  # adapters never share pages with KV or each other
    return chameleon_pb2.Headroom(
        rank=rank, free_device_bytes=free, total_device_bytes=total, pool_pages_total=num_pages,
        pool_pages_used=kv + adapter_pages, kv_pages_used=kv, adapter_pages_used=adapter_pages,
        page_bytes=page_bytes, resident_adapters=len(adapters))
