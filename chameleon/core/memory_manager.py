"""The one place that decides memory: KV reservations, adapter residency, eviction, prefetch, headroom.

Model (design.md "one pool, two tenants"): a request is admitted only with its whole KV reservation
(input_tokens + max_new_tokens, non-preemptive: it never waits for KV mid-flight) and its adapter
resident and pinned. Idle adapters (refcount 0) are cache: their pages are reclaimed, in the policy's
order, the moment an admission needs them; adapters wanted by queued requests go last.

Offloads: adapters evicted by an admission are in `Admission.evicted`; every other drop (release under
NoCache, headroom shrink) is queued and returned by `take_offloads()`. The engine must send the
offloads it got (both kinds) to the shards before any load, since a load may reuse those pages.

Headroom (`on_headroom`): two checks per reconcile. (1) A rank that reports more pool pages in use
than the router has handed out (reserved pages count as used on both sides) makes the router withhold
that many pages (unavailable for KV and adapters alike; idle cache entries are evicted, policy order,
until the free pages cover them); each report replaces the previous verdict. (2) With a headroom
target (`set_headroom`; chameleon/core/headroom.py has the rule), measured free memory below the
target on any rank lowers the pool's page budget: the allocator's limit drops (elastic.py), idle
adapters above it are relocated into free pages below it or evicted, lowest cost-aware score first
(never one in use or wanted by a queued request; never the KV of a running request, which drains),
and `resize_request()` tells the engine when the shards can release the vacated segments. If the
budget leaves no free page, nothing that needs new pages is admitted until memory recovers. Free
memory above target + margin grows the budget back, up to the whole pool (shards first, then the
limit: `resized`). Relocated adapters are returned by `take_relocations()` (load them at their new
pages after the offloads). Feed reports taken after the offloads the router already decided, or a
pending offload reads as a shortfall for that one report.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field

from chameleon.core.adapters import AdapterSpec
from chameleon.core.allocator import PagePool
from chameleon.core.cache.base import AdapterCache
from chameleon.core.elastic import ElasticPool
from chameleon.core.headroom import HeadroomPolicy, HeadroomReport, HeadroomTarget
from chameleon.core.memory import blocks_for_tokens
from chameleon.core.memory_elastic import ElasticMemory, MemoryCounters
from chameleon.core.request import Request


@dataclass(frozen=True, slots=True)
class Admission:
    """Resources granted to one admitted request.

    kv_pages: KV blocks for input_tokens + max_new_tokens. adapter_pages: pages of a NEW adapter load
    (empty on a cache hit or a base-model request). load_adapter: the engine must load the adapter into
    adapter_pages before/with the prefill. evicted: adapters the engine must offload first.
    """

    req_id: int
    adapter_id: str | None
    kv_pages: list[int]
    adapter_pages: list[int] = field(default_factory=list)
    load_adapter: bool = False
    evicted: list[str] = field(default_factory=list)
    hit: bool = False


class MemoryManager(ElasticMemory):
    """Owns the PagePool and the AdapterCache bookkeeping; see the module docstring for the model."""

    def __init__(self, pool: PagePool, cache: AdapterCache, block_size: int,
                 adapters: Callable[[str], AdapterSpec], device_reserve_bytes: int = 0) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.pool = pool
        self.cache = cache
        self.block_size = block_size
        self.adapters = adapters
        self.device_reserve_bytes = device_reserve_bytes
        self.withheld = 0
        self.elastic = ElasticPool(pool.num_pages)
        self._policy: HeadroomPolicy | None = None
        if device_reserve_bytes > 0:
            self.set_headroom(HeadroomTarget(device_reserve_bytes, 0.0))
        self._relocated: list[str] = []
        self._pending: dict[str, int] = {}  # pages the shards still hold for decided drops/moves
        self._held: dict[int, Admission] = {}
        self._queued: Container[str] = frozenset()
        self._offloads: list[str] = []
        self._n = MemoryCounters()

    # ---- queries -------------------------------------------------------------------------------
    def kv_pages_for(self, req: Request) -> int:
        return blocks_for_tokens(req.total_tokens, self.block_size)

    def adapter_tokens(self, adapter_id: str | None) -> int:
        """An adapter's footprint in KV-token equivalents (pages * block_size); 0 for the base model."""
        return 0 if adapter_id is None else self.adapters(adapter_id).pages * self.block_size

    def capacity_tokens(self) -> int:
        return self.pool.capacity * self.block_size

    def available(self) -> int:
        """Free pages usable now (free minus withheld)."""
        return max(0, self.pool.free_pages() - self.withheld)

    def resident(self, adapter_id: str | None) -> bool:
        return adapter_id is None or adapter_id in self.cache

    def _reclaimable(self, exclude: str | None) -> int:
        """Pages evicting every idle entry but `exclude` would free (pages above a shrunk pool's limit
        leave service instead: they free nothing)."""
        if self.pool.limit < self.pool.num_pages:
            return sum(self._usable(e.pages) for e in self.cache.entries()
                       if e.refcount == 0 and e.adapter_id != exclude)
        idle = self.cache.idle_pages()
        entry = self.cache.get(exclude) if exclude is not None else None
        if entry is not None and entry.refcount == 0:
            idle -= len(entry.pages)
        return idle

    def _usable(self, pages: list[int]) -> int:
        """How many of `pages` return to the free pages when freed (those below the limit)."""
        limit = self.pool.limit
        return len(pages) if limit >= self.pool.num_pages else sum(1 for p in pages if p < limit)

    def _load_pages(self, adapter_id: str | None) -> int:
        return 0 if self.resident(adapter_id) else self.adapters(adapter_id).pages  # type: ignore[arg-type]

    def adapter_fits(self, adapter_id: str | None) -> bool:
        """True when the adapter is resident or would fit after evicting every idle entry."""
        return self._load_pages(adapter_id) <= self.available() + self._reclaimable(None)

    def admissible(self, req: Request) -> bool:
        """Could `req` ever run, in an otherwise empty pool? Callers should reject requests for which
        this is False up front: a scheduler would keep them queued forever (FIFO: blocking all)."""
        adapter = 0 if req.adapter_id is None else self.adapters(req.adapter_id).pages
        return self.kv_pages_for(req) + adapter <= self.pool.capacity

    def admission_pages(self, req: Request) -> int:
        """Pages admitting `req` now takes from the free and reclaimable ones: its KV, and its adapter
        unless resident."""
        return self.kv_pages_for(req) + self._load_pages(req.adapter_id)

    def shortfall(self, req: Request, extra_pages: int = 0) -> int:
        """Pages `req` still lacks after evicting every idle entry, given `extra_pages` more free ones
        (<= 0: it fits)."""
        usable = self.available() + self._reclaimable(req.adapter_id) + extra_pages
        return self.admission_pages(req) - usable

    def can_admit(self, req: Request, extra_pages: int = 0) -> bool:
        """Would try_admit succeed (evicting idle entries as needed) with `extra_pages` more free pages?"""
        return req.id not in self._held and self.shortfall(req, extra_pages) <= 0

    def releasable_pages(self, req_id: int) -> int:
        """Pages that releasing this running request would make usable (KV, plus its adapter if it is the
        adapter's last user: the adapter then becomes idle, hence reclaimable)."""
        adm = self._held.get(req_id)
        if adm is None:
            return 0
        pages = self._usable(adm.kv_pages)
        entry = self.cache.get(adm.adapter_id) if adm.adapter_id is not None else None
        if entry is not None and entry.refcount == 1:
            pages += self._usable(entry.pages)
        return pages

    def admission(self, req_id: int) -> Admission | None:
        return self._held.get(req_id)

    # ---- admission and release -----------------------------------------------------------------
    def set_queue_view(self, queued_adapters: Container[str]) -> None:
        """The live set of adapters queued requests wait for (protected from eviction, kept by NoCache)."""
        self._queued = queued_adapters

    def _victims(self, pages: int, now: float, exclude: str | None) -> list[str] | None:
        deficit = pages - self.available()
        if deficit <= 0:
            return []
        if deficit > self._reclaimable(exclude):
            return None
        victims, freed = [], 0
        for entry in self.cache.eviction_order(now, self._queued, exclude):
            usable = self._usable(entry.pages)
            if not usable:
                continue  # wholly above a shrunk pool's limit: evicting it frees nothing here
            victims.append(entry.adapter_id)
            freed += usable
            if freed >= deficit:
                return victims
        return None

    def _evict(self, adapter_id: str) -> None:
        self.cache.remove(adapter_id)
        self.pool.free_adapter(adapter_id)
        self._n.evictions += 1

    def evict(self, adapter_id: str, now: float) -> bool:
        """Drop an idle resident adapter on request (admin unload, an adapter the shards refused) and
        free its pages; counted as an eviction. False when it is not resident. Raises RuntimeError
        while running requests use it. The caller offloads it from the shards (not queued in
        take_offloads, since the caller knows)."""
        entry = self.cache.get(adapter_id)
        if entry is None:
            return False
        if entry.refcount > 0:
            raise RuntimeError(f"adapter {adapter_id!r} is in use by {entry.refcount} running requests")
        self._evict(adapter_id)
        return True

    def try_admit(self, req: Request, now: float,
                  queued_adapters: Container[str] | None = None) -> Admission | None:
        """Reserve KV and pin the adapter (loading it, evicting idle entries if short); atomic: on
        None nothing changed. `queued_adapters` (optional) updates the live queue view."""
        if req.id in self._held:
            raise ValueError(f"request {req.id} is already admitted")
        if queued_adapters is not None:
            self._queued = queued_adapters
        aid = req.adapter_id
        kv_n, load_n = self.kv_pages_for(req), self._load_pages(aid)
        load = not self.resident(aid)  # also an adapter of 0 pages (one the shards hold themselves)
        victims = self._victims(kv_n + load_n, now, aid)
        if victims is None:
            self._n.refused += 1
            return None
        for v in victims:
            self._evict(v)
        kv_pages = self.pool.alloc_kv(req.id, kv_n)
        new_pages: list[int] = []
        if load:
            new_pages = self.pool.alloc_adapter(aid, load_n) or []  # type: ignore[arg-type]
            self.cache.insert(self.adapters(aid), new_pages, now)  # type: ignore[arg-type]
        if kv_pages is None or len(new_pages) != load_n:
            raise RuntimeError("page pool disagrees with the free-page accounting")  # internal bug
        hit = aid is not None and not load
        if aid is not None:
            self.cache.pin(aid, now)
            self._n.hits += hit
            self._n.misses += not hit
        adm = Admission(req.id, aid, kv_pages, new_pages, load, victims, hit)
        self._held[req.id] = adm
        return adm

    def release(self, req_id: int, now: float) -> None:
        """Free the request's KV pages and unpin its adapter (dropped at refcount 0 if the policy
        does not keep idle adapters; the drop is reported by take_offloads). Unknown ids are ignored."""
        adm = self._held.pop(req_id, None)
        if adm is None:
            return
        self.pool.free_kv(req_id)
        if adm.adapter_id is None:
            return
        entry = self.cache.unpin(adm.adapter_id, now)
        if entry.refcount == 0 and not self.cache.keep_idle(entry, self._queued):
            self._evict(adm.adapter_id)
            self._offloads.append(adm.adapter_id)

    def take_offloads(self) -> list[str]:
        """Adapters dropped outside an admission since the last call (send these offloads first)."""
        out, self._offloads = self._offloads, []
        for aid in out:
            self._pending.pop(aid, None)
        return out

    # ---- prefetch and headroom -----------------------------------------------------------------
    def prefetch(self, adapter_ids: Iterable[str | None], now: float, reserve_pages: int = 0,
                 max_loads: int = 4, depth: int = 32) -> list[tuple[str, list[int]]]:
        """Load the first queued requests' adapters (queue order) into FREE pages only, keeping
        `reserve_pages` free for KV (e.g. the head request's KV need). Never evicts. Looks at the first
        `depth` distinct adapters and loads at most `max_loads`. Returns [(adapter_id, pages)].
        Under a policy that drops idle adapters (NoCache) it first drops idle entries that neither a
        queued request (queue view) nor `adapter_ids` wants; those drops go to take_offloads()."""
        ids = list(adapter_ids)
        if self.cache.drops_idle:
            self.drop_unneeded(set(ids))
        loads: list[tuple[str, list[int]]] = []
        seen: set[str] = set()
        for aid in ids:
            if len(seen) >= depth or len(loads) >= max_loads:
                break
            if aid is None or aid in seen:
                continue
            seen.add(aid)
            if aid in self.cache:
                continue
            spec = self.adapters(aid)
            if spec.pages > self.available() - reserve_pages:
                continue
            pages = self.pool.alloc_adapter(aid, spec.pages) or []
            self.cache.insert(spec, pages, now, prefetched=True)
            self._n.prefetches += 1
            loads.append((aid, pages))
        return loads

    def drop_unneeded(self, wanted: Container[str] = frozenset()) -> None:
        """Drop idle entries the policy does not keep (NoCache: nobody runs or waits for them)."""
        for entry in list(self.cache.entries()):
            if entry.refcount == 0 and entry.adapter_id not in wanted \
                    and not self.cache.keep_idle(entry, self._queued):
                self._evict(entry.adapter_id)
                self._offloads.append(entry.adapter_id)

    def on_headroom(self, reports: HeadroomReport | Iterable[HeadroomReport], now: float = 0.0) -> None:
        """Reconcile with the ranks' measured headroom (see module docstring)."""
        reports = [reports] if isinstance(reports, HeadroomReport) else list(reports)
        used = self.pool.num_pages - self.pool.free_pages() - self._out_of_service()
        used += sum(self._pending.values())  # not yet offloaded on the shards: not a shortfall
        short = max((rep.pool_pages_used - used for rep in reports), default=0)
        self.withheld = min(max(short, 0), self.pool.capacity)
        for entry in self.cache.eviction_order(now, self._queued):
            if self.pool.free_pages() >= self.withheld:
                break
            self._drop(entry.adapter_id)
        if self._policy is None or not reports:
            return
        self.elastic.learn(min(r.allocated for r in reports), max(r.segment_pages for r in reports))
        self.set_budget(self._policy.budget(reports, self.elastic.budget, now), now)

    # ---- observability -------------------------------------------------------------------------
    def stats(self) -> dict[str, float]:
        tenants = self.pool.used_by_tenant()
        looked = self._n.hits + self._n.misses
        return {
            "kv_pages": tenants["kv"], "adapter_pages": tenants["adapter"],
            "free_pages": self.pool.free_pages(), "withheld_pages": self.withheld,
            "resident_adapters": len(self.cache), "idle_adapter_pages": self.cache.idle_pages(),
            "running": len(self._held), "hits": self._n.hits, "misses": self._n.misses,
            "hit_rate": self._n.hits / looked if looked else 0.0, "evictions": self._n.evictions,
            "prefetches": self._n.prefetches, "refused": self._n.refused,
            **self._elastic_stats(),
        }

    def check_integrity(self) -> None:
        """Pool integrity plus agreement between cache entries, pool pages and running requests."""
        self.pool.check_integrity()
        refs: dict[str, int] = {}
        for adm in self._held.values():
            if adm.adapter_id is not None:
                refs[adm.adapter_id] = refs.get(adm.adapter_id, 0) + 1
        idle = 0
        for entry in self.cache.entries():
            if self.pool.adapter_pages(entry.adapter_id) != entry.pages:
                raise RuntimeError(f"adapter {entry.adapter_id!r}: cache and pool pages disagree")
            if entry.refcount != refs.get(entry.adapter_id, 0):
                raise RuntimeError(f"adapter {entry.adapter_id!r}: refcount {entry.refcount} but "
                                   f"{refs.get(entry.adapter_id, 0)} running requests use it")
            idle += len(entry.pages) if entry.refcount == 0 else 0
        if idle != self.cache.idle_pages():
            raise RuntimeError(f"idle page count {self.cache.idle_pages()} != {idle}")
        if self.pool.used_by_tenant()["adapter"] != sum(len(e.pages) for e in self.cache.entries()):
            raise RuntimeError("pool holds adapter pages the cache does not know about")
        missing = [r for r in refs if r not in self.cache]
        if missing:
            raise RuntimeError(f"running requests use non-resident adapters {missing}")
