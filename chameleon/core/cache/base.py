"""Adapter-cache policy: which resident adapters exist, who uses them, and which idle one goes first.

The cache owns bookkeeping only; pages are owned by `PagePool` and every load/evict decision is
taken by `MemoryManager`, which asks the policy for an eviction order. Invariants:
- an entry with refcount > 0 (a running request uses it) is never offered for eviction;
- idle entries wanted by queued requests ("protected") come after every other idle entry;
- usage history (windowed frequency, last use) survives eviction, so a reloaded adapter keeps it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Container, Iterator
from dataclasses import dataclass, field

from chameleon.core.adapters import AdapterSpec


@dataclass(slots=True, eq=False)
class CacheEntry:
    """One resident adapter. `pages` are the pool pages holding it on every rank."""

    spec: AdapterSpec
    pages: list[int]
    loaded_at: float
    last_used: float
    refcount: int = 0
    prefetched: bool = False
    uses: int = field(default=0)

    @property
    def adapter_id(self) -> str:
        return self.spec.adapter_id


class AdapterCache(ABC):
    """Base of every policy. Subclasses define `_order` (idle entries, first to evict first) and may
    override `keep_idle` (NoCache drops an adapter as soon as nobody runs or waits for it)."""

    name = "base"
    drops_idle = False  # True when keep_idle can say no (MemoryManager then sweeps idle entries)

    def __init__(self, window_s: float = 300.0) -> None:
        if window_s <= 0:
            raise ValueError(f"frequency window must be > 0 seconds, got {window_s}")
        self.window_s = window_s
        self._entries: dict[str, CacheEntry] = {}
        self._history: dict[str, deque[float]] = {}
        self._idle_pages = 0

    def __contains__(self, adapter_id: object) -> bool:
        return adapter_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, adapter_id: str) -> CacheEntry | None:
        return self._entries.get(adapter_id)

    def entries(self) -> Iterator[CacheEntry]:
        return iter(self._entries.values())

    def idle_pages(self) -> int:
        """Pages held by entries with refcount 0 (reclaimable on demand)."""
        return self._idle_pages

    def insert(self, spec: AdapterSpec, pages: list[int], now: float, prefetched: bool = False) -> CacheEntry:
        """Register a freshly loaded, idle adapter."""
        if spec.adapter_id in self._entries:
            raise ValueError(f"adapter {spec.adapter_id!r} is already resident")
        entry = CacheEntry(spec, list(pages), loaded_at=now, last_used=now, prefetched=prefetched)
        self._entries[spec.adapter_id] = entry
        self._idle_pages += len(entry.pages)
        return entry

    def remove(self, adapter_id: str) -> CacheEntry:
        """Forget a resident adapter; refuses while running requests use it."""
        entry = self._entries[adapter_id]
        if entry.refcount > 0:
            raise RuntimeError(f"adapter {adapter_id!r} is in use by {entry.refcount} running requests")
        del self._entries[adapter_id]
        self._idle_pages -= len(entry.pages)
        return entry

    def pin(self, adapter_id: str, now: float) -> CacheEntry:
        """A running request starts using the adapter: refcount+1 and one recorded use."""
        entry = self._entries[adapter_id]
        if entry.refcount == 0:
            self._idle_pages -= len(entry.pages)
        entry.refcount += 1
        entry.last_used = now
        entry.uses += 1
        self._record(adapter_id, now)
        return entry

    def unpin(self, adapter_id: str, now: float) -> CacheEntry:
        entry = self._entries[adapter_id]
        if entry.refcount <= 0:
            raise RuntimeError(f"adapter {adapter_id!r} unpinned more often than pinned")
        entry.refcount -= 1
        entry.last_used = now
        if entry.refcount == 0:
            self._idle_pages += len(entry.pages)
        return entry

    def keep_idle(self, entry: CacheEntry, queued: Container[str]) -> bool:
        """Whether an entry whose refcount just reached 0 stays resident. Caching policies keep it."""
        return True

    def frequency(self, adapter_id: str, now: float) -> int:
        """Uses of the adapter within the last `window_s` seconds."""
        hist = self._history.get(adapter_id)
        if hist is None:
            return 0
        horizon = now - self.window_s
        while hist and hist[0] < horizon:
            hist.popleft()
        return len(hist)

    def _record(self, adapter_id: str, now: float) -> None:
        self._history.setdefault(adapter_id, deque()).append(now)
        self.frequency(adapter_id, now)

    def eviction_order(self, now: float, protected: Container[str],
                       exclude: str | None = None) -> list[CacheEntry]:
        """Idle entries, first to evict first: unprotected ones in policy order, then protected ones."""
        idle = [e for e in self._entries.values() if e.refcount == 0 and e.adapter_id != exclude]
        free = [e for e in idle if e.adapter_id not in protected]
        kept = [e for e in idle if e.adapter_id in protected]
        return self._order(free, now) + self._order(kept, now)

    @abstractmethod
    def _order(self, idle: list[CacheEntry], now: float) -> list[CacheEntry]:
        """Sort idle entries so that the first is evicted first. Must be deterministic (break ties by id)."""
