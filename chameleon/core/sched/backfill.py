"""Backfill behind a blocked starved head (conservative backfilling, Mu'alem and Feitelson 2001), in
engine steps.

When the oldest starved head does not fit in memory now, the MLQ admits nothing newer (starve_block),
so that freed pages go to that head. Under deep overload every queued request is starved, the MLQ
admits in arrival order, and pages that are free but too few for the head stay idle until enough
running requests finish: the head-of-line blocking FIFO has.

Backfilling fills those pages without delaying anyone older. `Profile` is the free memory over the
coming steps: the pages usable now (free, plus idle adapters that could be evicted), plus the pages each
running request releases when it ends, at the latest after `max_new_tokens - generated` more steps (the
engine reserves its KV for max_new_tokens; a request that stops early frees its pages sooner). Requests
are then taken in queue order (`waiting()`, the head first); each gets the earliest start at which its
pages (KV, and its adapter unless resident) stay free for its `max_new_tokens` steps:
  - start 0 (it fits now, for its whole run): it is admitted now (backfilled), the head excepted, if
    `admit` takes it (the MLQ: within its queue's quota, as phase 1 admits, and the step's budget);
  - otherwise it is booked at its earliest start (0 included), and nothing offered after it may use
    those pages.
So a backfilled request never moves the start of one offered before it: the head and every other
request ahead of it in queue order keep the step at which memory would have let them in.
Only requests whose adapter is resident (or the base model) are backfilled: a load stalls the batch's
step (the shards serialize LoadAdapter with decode) and so delays everyone in time, which a count of
steps does not see. Unless `evict`, a backfilled request must also fit the free pages now: evicting
idle cached adapters to backfill (which the profile counts as usable, as the head may) costs reloads
later; live on the CPU demo that variant lost, free pages only did not. Steps, not seconds: a larger
batch makes steps somewhat slower but does not change how many steps a running request has left.
Unlike the bypass (bypass.py) nothing is predicted and nothing is squashed: each bound is the request's
own `max_new_tokens`.
Cost: only in steps where a starved head is blocked on memory; O(running log running) for the profile
plus O(lookahead x pieces) for the offers.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence

from chameleon.core.memory_manager import MemoryManager
from chameleon.core.request import Request


class Profile:
    """Pages available over future steps: a step function, value `avail[i]` on [at[i], at[i+1]) (the
    last one holds for ever). Starts from running requests' guaranteed releases; `take` books pages."""

    def __init__(self, now_pages: int, releases: Iterable[tuple[int, int]]) -> None:
        self.at: list[int] = [0]
        self.avail: list[int] = [now_pages]
        for step, pages in sorted(releases):
            if step <= self.at[-1]:
                self.avail[-1] += pages
            else:
                self.at.append(step)
                self.avail.append(self.avail[-1] + pages)

    @classmethod
    def of(cls, head: Request, memory: MemoryManager, running: Sequence[Request]) -> Profile:
        """The head's view: what it could use now (its pages minus its shortfall) and the releases of
        `running` (KV, and an adapter whose last user it is) at their guaranteed end."""
        now_pages = memory.admission_pages(head) - memory.shortfall(head)
        return cls(now_pages, ((max(0, r.max_new_tokens - r.generated), memory.releasable_pages(r.id))
                               for r in running))

    def earliest(self, pages: int, steps: int) -> float:
        """The first step from which `pages` stay available for `steps` steps (inf: never)."""
        at, avail = self.at, self.avail
        i = 0
        while i < len(at):
            if avail[i] < pages:
                i += 1
                continue
            j = i  # pages fit from at[i]: check every later piece until at[i] + steps
            while j + 1 < len(at) and at[j + 1] < at[i] + steps and avail[j + 1] >= pages:
                j += 1
            if j + 1 >= len(at) or at[j + 1] >= at[i] + steps:
                return at[i]
            i = j + 1
        return math.inf

    def take(self, start: int, pages: int, steps: int) -> None:
        """Book `pages` on [start, start + steps)."""
        end = start + steps
        for t in (start, end):
            k = bisect_right(self.at, t) - 1
            if self.at[k] != t:
                self.at.insert(k + 1, t)
                self.avail.insert(k + 1, self.avail[k])
        for k in range(bisect_right(self.at, start) - 1, bisect_right(self.at, end) - 1):
            self.avail[k] -= pages


class Backfill:
    """Admits younger requests behind a blocked head under the profile rule; counts them."""

    def __init__(self, lookahead: int, evict: bool = False) -> None:
        self.lookahead, self.evict = lookahead, evict
        self.total = 0

    def fill(self, head: Request, memory: MemoryManager, running: Sequence[Request],
             candidates: Iterable[Request], admit: Callable[[Request], bool]) -> None:
        """Offer `candidates` (queue order after the head) to `admit` (which applies the step budget and
        memory and returns whether it admitted) where the profile allows them."""
        if self.lookahead <= 0 or (not self.evict and memory.available() <= 0):
            return  # off, or no free page for anyone to take now
        prof = Profile.of(head, memory, running)
        need, steps = memory.admission_pages(head), max(1, head.max_new_tokens)
        start = prof.earliest(need, steps)
        if start <= 0 or start == math.inf:
            return  # not blocked on memory after all, or never fits beside what runs: nothing to protect
        prof.take(int(start), need, steps)
        for scanned, cand in enumerate(candidates):
            if scanned >= self.lookahead:
                break
            if cand is head:
                continue
            pages, steps = memory.admission_pages(cand), max(1, cand.max_new_tokens)
            start = prof.earliest(pages, steps)
            if (start == 0 and memory.resident(cand.adapter_id)
                    and (self.evict or pages <= memory.available()) and admit(cand)):
                self.total += 1
                prof.take(0, pages, steps)
            elif start < math.inf:
                prof.take(int(start), pages, steps)  # booked: protected from later offers
