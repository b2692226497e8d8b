"""Warmup: size the page pool from measured memory, and exercise one prefill of the router's batch.

Pool bytes = free memory after the weights are loaded - the measured activation peak of a
`max_prefill_tokens` forward. CPU: free = `--memory-budget` - the weights' bytes (the budget covers the
serving tensors), capped by `memory_fraction` of the measured free memory (shard/server/free_memory.py);
CUDA: free device memory (times `memory_fraction`). The same page
count is used on every rank (minimum over ranks), since page ids are shared. The top `adapter_pages`
pages form the shard's own adapter region (plain-TGI mode) and are not offered to the router as KV:
max_supported_total_tokens = kv_pages * block_size.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
from dataclasses import dataclass
from typing import Any

import torch
from chameleon_pb import chameleon_pb2, generate_pb2

from shard.server.headroom import DeviceMemory


@dataclass(frozen=True, slots=True)
class PoolPlan:
    num_pages: int
    kv_pages: int          # pages [0, kv_pages) are the router's KV blocks (0 = liveness)
    page_bytes: int
    activation_bytes: int
    free_bytes: int


def release_pool(runner: Any, adapter_manager: Any) -> None:
    """Drop the previous pool (and the adapters in it) before free memory is measured for a new one.

    A second Warmup (a router restarted against running shards) must not count the old pool as used,
    or the new plan would find no room for a KV cache. Large tensors are returned to the OS when freed
    (CPU: glibc unmaps them; CUDA: empty_cache)."""
    for info in adapter_manager.store.resident():
        adapter_manager.offload(info.adapter_id)
    adapter_manager.set_pool(0, 0)
    runner.pool = None
    gc.collect()
    if runner.device.type == "cuda":
        torch.cuda.empty_cache()
    else:
        _malloc_trim()


def _malloc_trim() -> None:
    """Hand freed heap memory back to the OS (glibc), so RSS shows what is really in use. Elsewhere
    RSS may read a little high, and the new pool come out a little smaller."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def free_bytes_for_pool(mem: DeviceMemory, memory_fraction: float, weight_bytes: int) -> int:
    """Bytes available for activations + the pool, once the weights are loaded and no pool is held."""
    if mem.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(mem.device)
        return int(free * memory_fraction)
    budget = mem.budget_bytes - weight_bytes
    if not mem.measured:
        return budget
    measured, _ = mem.measure(0)  # never carve more than the machine (or the cgroup) has free
    return min(budget, int(measured.free_bytes * memory_fraction))


def plan_pool(free_bytes: int, activation_bytes: int, page_bytes: int, adapter_pages: int) -> PoolPlan:
    """Pages that fit in `free_bytes - activation_bytes`; ValueError with the numbers when too few."""
    num_pages = max(free_bytes - activation_bytes, 0) // page_bytes
    kv_pages = num_pages - adapter_pages
    if kv_pages < 2:
        raise ValueError(
            f"not enough memory for a KV cache: {free_bytes} bytes free after the weights, "
            f"{activation_bytes} reserved for activations, {page_bytes} bytes per page, {adapter_pages} "
            "pages kept for adapters; raise --memory-budget (CPU) or lower --max-batch-prefill-tokens")
    return PoolPlan(num_pages, kv_pages, page_bytes, activation_bytes, free_bytes)


def warmup_batch_with_blocks(pb: generate_pb2.Batch, token_counts: list[int], block_size: int,
                             kv_pages: int, max_positions: int = 0) -> generate_pb2.Batch | None:
    """Copy of the router's warmup batch with shard-assigned blocks (one prefill + one token each);
    requests that do not fit in the KV pages are left out. None when nothing fits. A request longer
    than the model takes (`max_positions` - 1 tokens; 0 = no limit) is cut to that length, so that a
    router asking for a longer warmup prompt than the model supports still warms the shard up."""
    out = generate_pb2.Batch(id=pb.id, max_tokens=pb.max_tokens)
    next_page = 1
    for req, n in zip(pb.requests, token_counts, strict=True):
        if max_positions > 1 and n > max_positions - 1:
            n = max_positions - 1
        need = -(-(n + 1) // block_size)
        if next_page + need > kv_pages:
            break
        r = out.requests.add()
        r.CopyFrom(req)
        r.id = len(out.requests) - 1
        del r.blocks[:], r.slots[:]
        r.blocks.extend(range(next_page, next_page + need))
        r.stopping_parameters.max_new_tokens = 1
        r.truncate = n  # n = min(prompt tokens, the router's truncate, max_positions - 1)
        next_page += need
    out.size = len(out.requests)
    return out if out.requests else None


def pool_layout(plan: PoolPlan, block_size: int, weight_bytes: int) -> chameleon_pb2.PoolLayout:
    return chameleon_pb2.PoolLayout(
        page_bytes=plan.page_bytes, num_pages=plan.num_pages, block_size=block_size,
        kv_bytes_per_token=plan.page_bytes // block_size, activation_reserve_bytes=plan.activation_bytes,
        weight_bytes=weight_bytes)
