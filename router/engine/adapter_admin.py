"""Run-time adapter management (`Engine.admin`): list, load (pre-warm), unload.

Load and unload are commands of the serving loop: they run between two steps, so they never race a
batch. A pre-warmed adapter is an idle cache entry: it stays resident until the cache policy evicts it.
Unload is refused while running requests use the adapter.
"""

from __future__ import annotations

from typing import Protocol

from chameleon.core.adapters import AdapterSpec
from router.engine.adapter_registry import AdapterRegistry
from router.engine.loop import ServingLoop
from router.engine.types import AdapterStatus, EngineError


class AdapterHost(Protocol):
    """What the admin operations need from the engine (router/engine/entry.py)."""

    @property
    def registry(self) -> AdapterRegistry | None: ...
    @property
    def loop(self) -> ServingLoop | None: ...
    def adapter_spec(self, adapter_id: str) -> AdapterSpec: ...
    def known(self, adapter_id: str) -> bool: ...


class AdapterAdminOps:
    def __init__(self, host: AdapterHost) -> None:
        self._host = host

    def _loop(self) -> ServingLoop:
        loop = self._host.loop
        if loop is None:
            raise EngineError("unavailable", "the engine is not started")
        return loop

    def list(self) -> list[AdapterStatus]:
        """Every known adapter (folder scan, shard list, looked up since), resident or not."""
        reg = self._host.registry
        if reg is None:
            return []
        refcounts = self._loop().adapter_refcounts()
        out = []
        for m in reg.all():
            refcount = refcounts.get(m.adapter_id)
            out.append(AdapterStatus(
                adapter_id=m.adapter_id, rank=m.rank, nbytes=m.nbytes, pages=m.pages,
                resident=refcount is not None, refcount=refcount or 0,
                target_modules=m.target_modules, alpha=m.alpha))
        return out

    def known(self, adapter_id: str) -> bool:
        return self._host.known(adapter_id)

    async def load(self, adapter_id: str) -> AdapterStatus:
        """Make the adapter resident on every rank now (into free pages; idle cache is not evicted)."""
        spec = self._host.adapter_spec(adapter_id)
        await self._loop().prewarm(spec)
        return next(s for s in self.list() if s.adapter_id == adapter_id)

    async def unload(self, adapter_id: str) -> bool:
        """Drop the adapter from the cache and the shards; False when it was not resident."""
        return bool(await self._loop().unload(adapter_id))
