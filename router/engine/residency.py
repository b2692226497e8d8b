"""What the shards actually hold: adapter id -> the pool pages it was loaded into on every rank.

The MemoryManager decides residency; this mirror tells the loop which decisions the shards have not
seen yet. An adapter is loaded when an admitted request (or a prefetch, or a pre-warm) needs it and
the shards hold it at other pages or not at all — which also re-loads everything after a shard
failure (`forget_all`), without touching the policy's cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Protocol

from chameleon_pb import chameleon_pb2

from router.engine.shard_client import ShardClient, ShardError


class Residency(Protocol):
    """What the loop, the admin ops and the stats need from the adapter mirror. `ShardAdapters` talks
    chameleon.v1 (LoadAdapter/OffloadAdapter); `SelfLoadingShards` (residency_v3.py) serves
    generate.v3-only shards, which load the adapters their requests name by themselves."""

    loads: int
    offloads: int
    bytes_loaded: int
    load_s: float

    def holds(self, adapter_id: str, pages: Sequence[int]) -> bool: ...
    def take_headroom(self) -> list[chameleon_pb2.Headroom]: ...
    def resident(self) -> dict[str, tuple[int, ...]]: ...
    def rebind(self, client: ShardClient) -> None: ...
    def forget_all(self) -> None: ...
    async def offload(self, adapter_ids: Iterable[str]) -> None: ...
    async def ensure(self, adapter_id: str, pages: Sequence[int], nbytes: int) -> None: ...


class ShardAdapters:
    def __init__(self, client: ShardClient) -> None:
        self._client = client
        self._on: dict[str, tuple[int, ...]] = {}
        self._suspect: set[str] = set()
        self.loads = 0
        self.offloads = 0
        self.bytes_loaded = 0
        self.load_s = 0.0
        self._headroom: list[chameleon_pb2.Headroom] = []

    def take_headroom(self) -> list[chameleon_pb2.Headroom]:
        """Headroom carried by the LoadAdapter/OffloadAdapter replies since the last call (last per rank)."""
        out = {h.rank: h for h in self._headroom}
        self._headroom = []
        return list(out.values())

    def _keep_headroom(self, replies: object) -> None:
        if isinstance(replies, list):
            self._headroom += [r.headroom for r in replies if r.HasField("headroom")]

    def holds(self, adapter_id: str, pages: Sequence[int]) -> bool:
        return self._on.get(adapter_id) == tuple(pages)

    def resident(self) -> dict[str, tuple[int, ...]]:
        return dict(self._on)

    def rebind(self, client: ShardClient) -> None:
        """Talk to the shards through a new client (after recovery); what they hold stays suspect."""
        self.forget_all()
        self._client = client

    def forget_all(self) -> None:
        """After a shard failure nothing is known about the ranks' adapters: each one they may still
        hold is offloaded before its next load (a stale copy must not be reused), then reloaded."""
        self._suspect.update(self._on)
        self._on.clear()

    async def offload(self, adapter_ids: Iterable[str]) -> None:
        """Drop adapters on every rank (before any load, which may reuse their pages)."""
        ids = [a for a in dict.fromkeys(adapter_ids) if a in self._on]
        for aid in ids:
            del self._on[aid]
        if not ids:
            return
        calls = (self._client.offload_adapter(a) for a in ids)
        results = await asyncio.gather(*calls, return_exceptions=True)
        self.offloads += len(ids)
        for res in results:
            self._keep_headroom(res)
            if isinstance(res, ShardError) and not res.is_request_error:
                raise res
            if isinstance(res, BaseException) and not isinstance(res, ShardError):
                raise res

    async def ensure(self, adapter_id: str, pages: Sequence[int], nbytes: int) -> None:
        """Load the adapter into `pages` on every rank unless it is already there. Raises ShardError
        (`is_request_error`: the adapter itself is bad) after a best-effort clean-up."""
        if self.holds(adapter_id, pages):
            return
        if adapter_id in self._on:
            await self.offload([adapter_id])
        elif adapter_id in self._suspect:
            await asyncio.gather(self._client.offload_adapter(adapter_id), return_exceptions=True)
        self._suspect.discard(adapter_id)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            self._keep_headroom(await self._client.load_adapter(adapter_id, pages))
        except ShardError:
            await asyncio.gather(self._client.offload_adapter(adapter_id), return_exceptions=True)
            raise
        self.load_s += loop.time() - t0
        self._on[adapter_id] = tuple(pages)
        self.loads += 1
        self.bytes_loaded += nbytes
