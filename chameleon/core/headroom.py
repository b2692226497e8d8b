"""Memory headroom as one shard rank reports it (mirrors `chameleon.v1.Headroom`, without protobuf)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HeadroomReport:
    """One rank's measured memory after serving a call.

    free_device_bytes: device memory free outside the pool (CPU: unused part of the memory budget).
    pool_pages_used: pool pages in use as the rank sees them (KV blocks + resident adapters).
    """

    rank: int
    free_device_bytes: int
    pool_pages_total: int
    pool_pages_used: int
    page_bytes: int
    kv_pages_used: int = 0
    adapter_pages_used: int = 0
