"""One page pool, two tenants: KV blocks of running requests and pages of resident adapters.

Page ids are what the router sends to every shard rank as KV `blocks` and as adapter pages. The pool
size is fixed at warmup. The free list is a stack (a fresh pool hands out the lowest ids first; freed
pages are reused first), so allocation and freeing cost O(pages moved) and are deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable


class PagePool:
    """Invariant: every non-reserved page is in exactly one of {free, one KV owner, one adapter owner}."""

    def __init__(self, num_pages: int, reserved: Iterable[int] = (0,)) -> None:
        if num_pages < 1:
            raise ValueError(f"a page pool needs at least one page, got num_pages={num_pages}")
        self.num_pages = num_pages
        self.reserved = frozenset(reserved)
        bad = [p for p in self.reserved if not 0 <= p < num_pages]
        if bad:
            raise ValueError(f"reserved pages {bad} are outside the pool [0, {num_pages})")
        self._free: list[int] = [p for p in reversed(range(num_pages)) if p not in self.reserved]
        self._kv: dict[int, list[int]] = {}
        self._adapters: dict[str, list[int]] = {}
        self._kv_used = 0
        self._adapter_used = 0

    @property
    def capacity(self) -> int:
        """Pages that can ever be handed out (pool minus reserved)."""
        return self.num_pages - len(self.reserved)

    def free_pages(self) -> int:
        return len(self._free)

    def used_by_tenant(self) -> dict[str, int]:
        return {"kv": self._kv_used, "adapter": self._adapter_used}

    def _take(self, n: int) -> list[int] | None:
        if n < 0:
            raise ValueError(f"cannot allocate a negative number of pages ({n})")
        if n > len(self._free):
            return None
        if n == 0:
            return []
        pages = self._free[-n:]
        del self._free[-n:]
        pages.reverse()
        return pages

    def _give_back(self, pages: list[int]) -> None:
        self._free.extend(reversed(pages))

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
        """Raise RuntimeError when a page is double-owned, leaked, out of range, or counts disagree."""
        owner: dict[int, str] = {}
        holders = [("free", p) for p in self._free]
        holders += [(f"kv:{r}", p) for r, ps in self._kv.items() for p in ps]
        holders += [(f"adapter:{a}", p) for a, ps in self._adapters.items() for p in ps]
        for who, p in holders:
            if p in self.reserved or not 0 <= p < self.num_pages:
                raise RuntimeError(f"page {p} held by {who} is reserved or outside the pool")
            if p in owner:
                raise RuntimeError(f"page {p} is owned twice: by {owner[p]} and {who}")
            owner[p] = who
        if len(owner) != self.capacity:
            raise RuntimeError(f"{self.capacity - len(owner)} pages leaked (neither free nor owned)")
        kv = sum(len(ps) for ps in self._kv.values())
        ad = sum(len(ps) for ps in self._adapters.values())
        if (kv, ad) != (self._kv_used, self._adapter_used):
            raise RuntimeError(f"tenant counts disagree: kv {kv} vs {self._kv_used}, "
                               f"adapter {ad} vs {self._adapter_used}")
