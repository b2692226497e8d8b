"""The elastic pool's router-side state: the page budget the headroom rule asks for, the pages the
shards have allocated, and when to tell them to resize (pure; MemoryManager owns one).

Protocol (router/engine/loop.py drives it): after headroom reports, `MemoryManager.on_headroom` sets
the budget. Shrinking lowers the allocator's limit at once (no new page is handed out above it); the
shards release memory only once nothing lives above the new top: `resize_request()` then answers the
page count to send in `ResizePool`, rounded UP to a whole segment and never below the highest page in
use (KV of running requests and adapters in use drain by themselves; idle adapters were evicted or
relocated). Growing asks the shards first (`resize_request()` > allocated) and raises the limit only
in `resized()`, after they confirmed, so no page id is ever used before its memory exists.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class ElasticPool:
    """num_pages: the pool's full size (page ids are valid below it on every rank, always)."""

    num_pages: int
    budget: int = -1            # pages the headroom rule wants allocated (-1: the full pool)
    allocated: int = -1         # pages the shards have allocated (-1: the full pool)
    segment_pages: int = 0      # the shards' resize granularity (0: not reported yet: no resize)
    resize_events: int = 0
    shrink_events: int = 0
    grow_events: int = 0
    pages_given_back: int = 0
    pages_regrown: int = 0

    def __post_init__(self) -> None:
        if self.budget < 0:
            self.budget = self.num_pages
        if self.allocated < 0:
            self.allocated = self.num_pages

    def learn(self, allocated: int, segment_pages: int) -> None:
        """What the ranks reported (the minimum allocated over ranks, their segment size)."""
        if segment_pages > 0:
            self.segment_pages = segment_pages
        if allocated > 0:
            self.allocated = min(allocated, self.num_pages)

    def resize_request(self, high_water: int) -> int | None:
        """Pages the shards should allocate now, or None. `high_water`: 1 + the highest page in use."""
        seg = self.segment_pages
        if seg <= 0:
            return None
        want = max(self.budget, high_water, 1)
        want = min(-(-want // seg) * seg, self.num_pages)
        return want if want != self.allocated else None

    def resized(self, pages: int) -> None:
        """The shards now hold `pages` pages (a ResizePool succeeded on every rank)."""
        pages = min(max(pages, 0), self.num_pages)
        if pages < self.allocated:
            self.shrink_events += 1
            self.pages_given_back += self.allocated - pages
        elif pages > self.allocated:
            self.grow_events += 1
            self.pages_regrown += pages - self.allocated
        self.resize_events += pages != self.allocated
        self.allocated = pages
