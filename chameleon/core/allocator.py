"""One page pool, two tenants: KV blocks of running requests and pages of resident adapters.

Page ids are what the router sends to every shard rank as KV `blocks` and as adapter pages. Ids range
over the pool's full size, fixed at warmup; the pool is elastic below that: `limit` is the page id
from which pages are out of service (the shards may release that memory, see design.md and the
headroom loop). Allocation hands out the LOWEST free ids first (a heap), so that used pages gather at
the bottom and a shrinking limit finds the top segments free or soon free. Pages at or above the limit
that are still owned (KV of a running request, an adapter in use) stay valid until freed; they then
leave service instead of returning to the free heap. Raising the limit puts unowned pages back.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable


class PagePool:
    """Invariant: every non-reserved page is in exactly one of {free (below the limit), one KV owner,
    one adapter owner, out of service (at or above the limit)}."""

    def __init__(self, num_pages: int, reserved: Iterable[int] = (0,)) -> None:
        if num_pages < 1:
            raise ValueError(f"a page pool needs at least one page, got num_pages={num_pages}")
        self.num_pages = num_pages
        self.reserved = frozenset(reserved)
        bad = [p for p in self.reserved if not 0 <= p < num_pages]
        if bad:
            raise ValueError(f"reserved pages {bad} are outside the pool [0, {num_pages})")
        self._free: list[int] = [p for p in range(num_pages) if p not in self.reserved]  # a heap
        self._kv: dict[int, list[int]] = {}
        self._adapters: dict[str, list[int]] = {}
        self._kv_used = 0
        self._adapter_used = 0
        self._limit = num_pages

    @property
    def capacity(self) -> int:
        """Pages that can ever be handed out (the full pool minus reserved; the limit does not count)."""
        return self.num_pages - len(self.reserved)

    @property
    def limit(self) -> int:
        """Pages with id >= limit are out of service (never handed out)."""
        return self._limit

    def free_pages(self) -> int:
        return len(self._free)

    def used_by_tenant(self) -> dict[str, int]:
        return {"kv": self._kv_used, "adapter": self._adapter_used}

    def high_water(self) -> int:
        """1 + the highest owned page id (0 when nothing is owned)."""
        owned = [max(ps) for ps in (*self._kv.values(), *self._adapters.values()) if ps]
        return max(owned) + 1 if owned else 0

    def owners_from(self, first_page: int) -> tuple[list[int], list[str]]:
        """(KV request ids, adapter ids) holding a page >= first_page."""
        return ([r for r, ps in self._kv.items() if any(p >= first_page for p in ps)],
                [a for a, ps in self._adapters.items() if any(p >= first_page for p in ps)])

    def set_limit(self, limit: int) -> None:
        """Take pages >= limit out of service (free ones leave the free heap now, owned ones when
        freed), or bring unowned pages below a raised limit back into service."""
        limit = max(0, min(limit, self.num_pages))
        if limit < self._limit:
            self._free = [p for p in self._free if p < limit]
            heapq.heapify(self._free)
        elif limit > self._limit:
            owned = {p for ps in (*self._kv.values(), *self._adapters.values()) for p in ps}
            for p in range(self._limit, limit):
                if p not in owned and p not in self.reserved:
                    heapq.heappush(self._free, p)
        self._limit = limit

    def _take(self, n: int) -> list[int] | None:
        if n < 0:
            raise ValueError(f"cannot allocate a negative number of pages ({n})")
        if n > len(self._free):
            return None
        return [heapq.heappop(self._free) for _ in range(n)]

    def _give_back(self, pages: list[int]) -> None:
        for p in pages:
            if p < self._limit:
                heapq.heappush(self._free, p)

    def alloc_kv(self, req_id: int, n: int) -> list[int] | None:
        """n pages for request `req_id`'s KV cache, or None (nothing changes) when fewer are free."""
        if req_id in self._kv:
            raise ValueError(f"request {req_id} already holds KV pages")
        pages = self._take(n)
        if pages is not None:
            self._kv[req_id] = pages
            self._kv_used += n
        return pages

    def free_kv(self, req_id: int) -> int:
        """Free the request's KV pages; returns how many (0 if it held none)."""
        pages = self._kv.pop(req_id, [])
        self._kv_used -= len(pages)
        self._give_back(pages)
        return len(pages)

    def alloc_adapter(self, adapter_id: str, n: int) -> list[int] | None:
        """n pages for a resident adapter, or None (nothing changes) when fewer are free."""
        if adapter_id in self._adapters:
            raise ValueError(f"adapter {adapter_id!r} already holds pages")
        pages = self._take(n)
        if pages is not None:
            self._adapters[adapter_id] = pages
            self._adapter_used += n
        return pages

    def free_adapter(self, adapter_id: str) -> int:
        pages = self._adapters.pop(adapter_id, [])
        self._adapter_used -= len(pages)
        self._give_back(pages)
        return len(pages)

    def kv_pages(self, req_id: int) -> list[int]:
        return list(self._kv.get(req_id, ()))

    def adapter_pages(self, adapter_id: str) -> list[int]:
        return list(self._adapters.get(adapter_id, ()))

    def check_integrity(self) -> None:
        """Raise RuntimeError when a page is double-owned, leaked, out of range, free above the limit,
        or counts disagree."""
        owner: dict[int, str] = {}
        holders = [("free", p) for p in self._free]
        holders += [(f"kv:{r}", p) for r, ps in self._kv.items() for p in ps]
        holders += [(f"adapter:{a}", p) for a, ps in self._adapters.items() for p in ps]
        for who, p in holders:
            if p in self.reserved or not 0 <= p < self.num_pages:
                raise RuntimeError(f"page {p} held by {who} is reserved or outside the pool")
            if p in owner:
                raise RuntimeError(f"page {p} is owned twice: by {owner[p]} and {who}")
            if who == "free" and p >= self._limit:
                raise RuntimeError(f"page {p} is free but out of service (limit {self._limit})")
            owner[p] = who
        out = sum(1 for p in range(self._limit, self.num_pages) if p not in owner and p not in self.reserved)
        if len(owner) + out != self.capacity:
            raise RuntimeError(f"{self.capacity - len(owner) - out} pages leaked (neither free nor owned)")
        kv = sum(len(ps) for ps in self._kv.values())
        ad = sum(len(ps) for ps in self._adapters.values())
        if (kv, ad) != (self._kv_used, self._adapter_used):
            raise RuntimeError(f"tenant counts disagree: kv {kv} vs {self._kv_used}, "
                               f"adapter {ad} vs {self._adapter_used}")
