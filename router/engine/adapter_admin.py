"""Run-time adapter management (`Engine.adapters`): list, load (pre-warm), unload.

Load and unload run inside the serving loop between two steps, so they never race a batch. A
pre-warmed adapter is an idle cache entry: it stays resident until the cache policy evicts it.
Unload is refused while running requests use the adapter.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from router.engine.shard_client import ShardError
from router.engine.types import AdapterStatus, EngineError

if TYPE_CHECKING:
    from router.engine.entry import Engine
    from router.engine.loop import ServingLoop


class AdapterAdminOps:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _loop(self) -> ServingLoop:
        loop = self._engine.loop
        if loop is None:
            raise EngineError("unavailable", "the engine is not started")
        return loop

    def list(self) -> list[AdapterStatus]:
        """Every known adapter (folder scan, shard list, looked up since), resident or not."""
        reg = self._engine.registry
        if reg is None:
            return []
        cache = self._loop().memory.cache
        out = []
        for m in reg.all():
            entry = cache.get(m.adapter_id)
            out.append(AdapterStatus(
                adapter_id=m.adapter_id, rank=m.rank, nbytes=m.nbytes, pages=m.pages,
                resident=entry is not None, refcount=entry.refcount if entry is not None else 0,
                target_modules=m.target_modules, alpha=m.alpha))
        return out

    def known(self, adapter_id: str) -> bool:
        return self._engine.known(adapter_id)

    async def load(self, adapter_id: str) -> AdapterStatus:
        """Make the adapter resident on every rank now (into free pages; idle cache is not evicted)."""
        spec = self._engine._spec_or_error(adapter_id)
        loop = self._loop()

        async def command() -> None:
            mem = loop.memory
            await loop.residency.offload(mem.take_offloads())
            if adapter_id not in mem.cache:
                loads = mem.prefetch([adapter_id], time.monotonic(), max_loads=1, depth=1)
                if not loads:
                    raise EngineError("overloaded", f"no free memory to pre-warm adapter {adapter_id!r} "
                                                    f"({spec.pages} pages needed, {mem.available()} free)")
            entry = mem.cache.get(adapter_id)
            assert entry is not None  # just inserted by prefetch, or already resident
            try:
                await loop.residency.ensure(adapter_id, entry.pages, spec.nbytes)
            except ShardError as exc:
                if entry.refcount == 0:
                    mem.evict(adapter_id, time.monotonic())
                kind = "validation" if exc.is_request_error else "generation"
                raise EngineError(kind, f"adapter {adapter_id!r} cannot be loaded: {exc.detail}") from exc

        await loop.call(command)
        return next(s for s in self.list() if s.adapter_id == adapter_id)

    async def unload(self, adapter_id: str) -> bool:
        """Drop the adapter from the cache and the shards; False when it was not resident."""
        loop = self._loop()

        async def command() -> bool:
            entry = loop.memory.cache.get(adapter_id)
            if entry is None:
                return False
            if entry.refcount > 0:
                raise EngineError("validation", f"adapter {adapter_id!r} is in use by {entry.refcount} "
                                                "running requests; retry when they finish")
            loop.memory.evict(adapter_id, time.monotonic())
            await loop.residency.offload([adapter_id])
            return True

        return bool(await loop.call(command))

