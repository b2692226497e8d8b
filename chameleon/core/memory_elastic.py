"""The elastic half of MemoryManager (chameleon/core/memory_manager.py): the headroom target, the page
budget it sets, vacating the top of the pool (idle adapters relocated below the limit or evicted,
lowest score first) and the resize handshake with the shards (elastic.py). MemoryManager inherits it;
nothing else uses it. The rule that turns measurements into a budget is in headroom.py.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

from chameleon.core.allocator import PagePool
from chameleon.core.cache.base import AdapterCache
from chameleon.core.elastic import ElasticPool
from chameleon.core.headroom import HeadroomPolicy, HeadroomTarget


@dataclass(slots=True)
class MemoryCounters:
    """MemoryManager's event counts (stats())."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    prefetches: int = 0
    refused: int = 0
    relocations: int = 0
    headroom_evictions: int = 0


class ElasticMemory:
    """State it works on (MemoryManager sets it up): the pool, the cache, the queue view, the drops and
    relocations the engine has not taken yet, and the pages the shards still hold for them."""

    pool: PagePool
    cache: AdapterCache
    elastic: ElasticPool
    _policy: HeadroomPolicy | None
    _queued: Container[str]
    _offloads: list[str]
    _relocated: list[str]
    _pending: dict[str, int]
    _n: MemoryCounters

    def _evict(self, adapter_id: str) -> None:
        raise NotImplementedError

    def set_headroom(self, target: HeadroomTarget | None) -> None:
        """Keep `target` free on every rank (None: no headroom rule; the pool stays as warmed up)."""
        self._policy = None if target is None else HeadroomPolicy(target, self.pool.num_pages)

    @property
    def headroom_target(self) -> HeadroomTarget | None:
        return None if self._policy is None else self._policy.target

    def set_budget(self, pages: int, now: float) -> None:
        """Pages the pool may keep allocated (clamped to [1 + reserved, num_pages])."""
        floor = max(self.pool.reserved, default=-1) + 1
        pages = max(min(pages, self.pool.num_pages), floor)
        self.elastic.budget = pages
        if pages < self.pool.limit:
            self.pool.set_limit(pages)
        elif pages > self.pool.limit:
            self.pool.set_limit(min(pages, self.elastic.allocated))
        if self.pool.limit < self.elastic.allocated:  # a shrink pending: idle adapters leave the top
            self._vacate(self.pool.limit, now)

    def _vacate(self, limit: int, now: float) -> None:
        """Idle adapters holding pages >= limit move below it or go: evict the lowest-score idle
        entries (anywhere) until the ones above the limit fit in the free pages, then relocate them."""
        order = [e for e in self.cache.eviction_order(now, self._queued) if e.adapter_id not in self._queued]
        above = {e.adapter_id for e in order if e.pages and max(e.pages) >= limit}
        need = sum(len(e.pages) for e in order if e.adapter_id in above)
        room = self.pool.free_pages()
        for entry in order:
            if need <= room:
                break
            n = len(entry.pages)
            if entry.adapter_id in above:
                above.discard(entry.adapter_id)
                need -= n
            else:
                room += n
            self._drop(entry.adapter_id)
            self._n.headroom_evictions += 1
        for aid in sorted(above):
            entry = self.cache.get(aid)
            pages = self.pool.alloc_adapter(aid, self.pool.free_adapter(aid)) if entry else None
            if entry is None or pages is None:  # cannot happen: need <= room
                raise RuntimeError("page pool disagrees with the free-page accounting")
            self._pending[aid] = len(pages)
            entry.pages = pages
            self._relocated.append(aid)
            self._n.relocations += 1

    def _drop(self, adapter_id: str) -> None:
        entry = self.cache.get(adapter_id)
        self._pending[adapter_id] = len(entry.pages) if entry is not None else 0
        self._evict(adapter_id)
        self._offloads.append(adapter_id)

    def _out_of_service(self) -> int:
        """Unowned pages at or above the limit (neither free nor used)."""
        not_free = self.pool.num_pages - self.pool.free_pages()
        return not_free - sum(self.pool.used_by_tenant().values()) - len(self.pool.reserved)

    def take_relocations(self) -> list[tuple[str, list[int]]]:
        """Adapters moved to new pages by a shrink: (id, pages) to load again (after the offloads)."""
        out, self._relocated = self._relocated, []
        for aid in out:
            self._pending.pop(aid, None)
        return [(a, e.pages) for a in dict.fromkeys(out) if (e := self.cache.get(a)) is not None]

    def resize_request(self) -> int | None:
        """Pages the shards should allocate now (send ResizePool), or None (see elastic.py)."""
        if self._policy is None:
            return None
        return self.elastic.resize_request(self.pool.high_water())

    def resized(self, pages: int) -> None:
        """Every rank now holds `pages` pages: grow the limit up to the budget."""
        self.elastic.resized(pages)
        if pages > self.pool.limit:
            self.pool.set_limit(min(pages, self.elastic.budget))

    def _elastic_stats(self) -> dict[str, float]:
        el, target = self.elastic, self.headroom_target
        return {
            "budget_pages": el.budget, "limit_pages": self.pool.limit, "allocated_pages": el.allocated,
            "segment_pages": el.segment_pages, "resize_events": el.resize_events,
            "shrink_events": el.shrink_events, "grow_events": el.grow_events,
            "pages_given_back": el.pages_given_back, "pages_regrown": el.pages_regrown,
            "relocations": self._n.relocations, "headroom_evictions": self._n.headroom_evictions,
            "headroom_target_bytes": target.nbytes if target else 0,
            "headroom_target_fraction": target.fraction if target else 0.0,
        }
