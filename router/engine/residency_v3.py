"""Adapter residency for shards that speak only generate.v3 (v3-only mode; see protocol.py).

Such a shard loads the adapter a request names (`Request.adapter_id`) by itself, in memory of its own,
as TGI does: the router sends no LoadAdapter/OffloadAdapter and gives adapters no pool pages. What the
router still owes its clients is that a refusal (an adapter the shard cannot load) fails only the
requests that want it, not the batch they would share: so the first time an adapter is needed (and
again after a shard failure) `ensure` sends the liveness request (one token on the reserved block 0)
naming that adapter, and clears it. A refusal there raises the shard's ShardError, as a refused
LoadAdapter would, and the caller fails that adapter's requests only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

from router.engine.health import liveness_batch
from router.engine.protocol import GENERATE_V3, ShardProtocol
from router.engine.residency import Residency, ShardAdapters
from router.engine.shard_client import ShardClient


class SelfLoadingShards:
    """The `Residency` of v3-only mode: offloads are no-ops, a load is a one-token probe, once."""

    def __init__(self, client: ShardClient) -> None:
        self._client = client
        self._proven: set[str] = set()
        self.loads = 0  # probes: adapters the shards loaded (and answered with) on first use
        self.offloads = 0
        self.bytes_loaded = 0
        self.load_s = 0.0

    def holds(self, adapter_id: str, pages: Sequence[int]) -> bool:
        return adapter_id in self._proven

    def take_headroom(self) -> list:
        """v3-only shards report no headroom."""
        return []

    def resident(self) -> dict[str, tuple[int, ...]]:
        """No adapter holds router pages (the shards keep theirs in their own memory)."""
        return {}

    def rebind(self, client: ShardClient) -> None:
        self._client = client
        self.forget_all()

    def forget_all(self) -> None:
        """After a shard failure every adapter is probed again before its next request."""
        self._proven.clear()

    async def offload(self, adapter_ids: Iterable[str]) -> None:
        """Nothing to send: the shards manage the memory of the adapters they loaded."""

    async def ensure(self, adapter_id: str, pages: Sequence[int], nbytes: int) -> None:
        """Probe the adapter on every rank unless it answered since the last failure. Raises ShardError
        (`is_request_error`: the shard refused the adapter)."""
        if adapter_id in self._proven:
            return
        batch = liveness_batch()
        batch.requests[0].adapter_id = adapter_id
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        result = await self._client.prefill(batch)
        if result.batch is not None:
            await self._client.clear_cache(result.batch.id)
        self.load_s += loop.time() - t0
        self._proven.add(adapter_id)
        self.loads += 1
        self.bytes_loaded += nbytes


def make_residency(protocol: ShardProtocol, client: ShardClient) -> Residency:
    """The adapter mirror for shards speaking `protocol`."""
    return SelfLoadingShards(client) if protocol == GENERATE_V3 else ShardAdapters(client)
