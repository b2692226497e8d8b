"""Measured memory headroom of this rank (chameleon.v1.Headroom), attached to every step reply.

CPU: the device is the `--memory-budget`; free = budget - this process's resident set size (RSS, read
from /proc), which includes the weights, the touched pool and the interpreter. CUDA: torch's
`mem_get_info` of the device. Pool pages: KV pages = blocks referenced by cached batches (+ page 0,
reserved for liveness); adapter pages = pages of resident adapters.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from chameleon_pb import chameleon_pb2


def process_rss_bytes() -> int:
    """Current resident set size of this process (peak RSS where /proc is unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass(frozen=True, slots=True)
class DeviceMemory:
    """How this rank measures its device: CUDA device, or a CPU byte budget."""

    device: torch.device
    budget_bytes: int

    def free_and_total(self) -> tuple[int, int]:
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            return int(free), int(total)
        return max(self.budget_bytes - process_rss_bytes(), 0), self.budget_bytes


def measure_headroom(mem: DeviceMemory, rank: int, num_pages: int, page_bytes: int,
                     kv_blocks: Iterable[int], adapters: list[object]) -> chameleon_pb2.Headroom:
    free, total = mem.free_and_total()
    kv = len(set(kv_blocks) | ({0} if num_pages else set()))
    adapter_pages = sum(len(a.pages) for a in adapters)  # adapters never share pages with KV or each other
    return chameleon_pb2.Headroom(
        rank=rank, free_device_bytes=free, total_device_bytes=total, pool_pages_total=num_pages,
        pool_pages_used=kv + adapter_pages, kv_pages_used=kv, adapter_pages_used=adapter_pages,
        page_bytes=page_bytes, resident_adapters=len(adapters))
