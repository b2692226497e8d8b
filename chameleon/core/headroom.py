"""Memory headroom: what one shard rank reports, the target the router keeps free, and the rule that
turns the two into a page budget for the pool (pure, no torch; the router's MemoryManager applies it).

Control rule (`HeadroomPolicy.budget`), per reconcile: let `free` be each rank's measured free bytes
(outside the pool) and `target` its headroom target (`HeadroomTarget.for_total`). The rule works on
the pages the shards have *allocated* (backed by memory) now, so repeated reports between two resizes
give the same answer:
  - some rank is short (free < target): budget = allocated - ceil(shortfall / page_bytes), rounded
    DOWN to a segment boundary (give back whole segments, at least the shortfall);
  - every rank has more than target + margin free: grow back into idle memory, leaving target + one
    segment free: budget = allocated + floor((free - target - segment) / page_bytes), rounded down
    to a segment, capped at the pool's full size;
  - otherwise (inside the dead band [target, target + margin]): no change.
The margin (hysteresis) is at least two segments and a quarter of the target: after a shrink free sits
within a segment above the target, after a growth about one segment above it, both inside the dead
band, so neither reads as a reason to move again; only a change of more than the margin does.
Growth phase: a growth is sized from one reading, and memory that is being freed (a co-tenant still
exiting, a driver releasing its cache) shows in later readings, by then inside the dead band: the
budget would stop short of where it was, for good. So for `settle_s` after each growth the threshold
to grow is only target + two segments (room for one whole segment beyond the one kept free): the
budget follows free memory up while it is still rising. A shrink ends the phase; without a growth for
`settle_s` the full margin applies again. A co-tenant that leaves gives back what it took, and the
budget returns to where it was (up to the segment kept free).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_HEADROOM_FRACTION = 0.05
_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
          "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}


@dataclass(frozen=True, slots=True)
class HeadroomReport:
    """One rank's measured memory after serving a call.

    free_device_bytes: memory free for others, measured (CUDA: mem_get_info plus what the caching
    allocator holds unused; CPU: the cgroup's limit minus its usage, else the host's MemAvailable).
    total_device_bytes: what that free is part of (device total, cgroup limit or MemTotal).
    pool_pages_used: pool pages in use as the rank sees them (KV blocks + resident adapters).
    pool_pages_allocated: pages backed by memory now (pages >= it were released; 0 = not reported,
    read as pool_pages_total). segment_pages: the granularity the rank allocates and releases in.
    resident_bytes: the rank process's own resident memory (CPU RSS; CUDA bytes reserved by torch).
    """

    rank: int
    free_device_bytes: int
    pool_pages_total: int
    pool_pages_used: int
    page_bytes: int
    kv_pages_used: int = 0
    adapter_pages_used: int = 0
    total_device_bytes: int = 0
    pool_pages_allocated: int = 0
    segment_pages: int = 0
    resident_bytes: int = 0

    @property
    def allocated(self) -> int:
        return self.pool_pages_allocated or self.pool_pages_total


@dataclass(frozen=True, slots=True)
class HeadroomTarget:
    """Free memory to keep for co-tenants and activation spikes: `nbytes` or `fraction` of the rank's
    total (the larger of the two when both are set). `off` (nbytes == fraction == 0): never shrink."""

    nbytes: int = 0
    fraction: float = DEFAULT_HEADROOM_FRACTION

    def __post_init__(self) -> None:
        if self.nbytes < 0 or not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"a headroom target is bytes >= 0 or a fraction in [0, 1), got "
                             f"{self.nbytes} bytes / fraction {self.fraction}")

    @classmethod
    def parse(cls, text: str) -> HeadroomTarget:
        """"0.1" (a fraction of total memory, < 1), "2147483648", "2GiB", "512M", "0" (off)."""
        s = str(text).strip().lower().replace("_", "")
        m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]i?)?b?", s)
        if m is None:
            raise ValueError(f"memory headroom must be BYTES (e.g. 2GiB, 512M, 1073741824) or a FRACTION "
                             f"of total memory in [0, 1) (e.g. 0.1), got {text!r}")
        number, unit = m.group(1), m.group(2) or ""
        value = float(number)
        if not unit and "." in number:
            if value >= 1.0:
                raise ValueError(f"a headroom fraction must be below 1, got {text!r}")
            return cls(0, value)
        if not unit and value == 0:
            return cls(0, 0.0)
        return cls(int(value * _UNITS[unit]), 0.0)

    def for_total(self, total_bytes: int) -> int:
        return max(self.nbytes, int(self.fraction * max(total_bytes, 0)))

    def describe(self) -> str:
        if self.nbytes and self.fraction:
            return f"max({self.nbytes} bytes, {self.fraction:g} of total)"
        return f"{self.fraction:g} of total" if self.fraction else f"{self.nbytes} bytes"


@dataclass(slots=True)
class HeadroomPolicy:
    """The page budget rule (module docstring). `num_pages`: the pool's full size (the ceiling);
    `settle_s`: how long after a growth the growth phase lasts. Its one piece of state, the end of the
    growth phase, belongs to the MemoryManager that owns the policy."""

    target: HeadroomTarget
    num_pages: int
    settle_s: float = 3.0
    grow_until: float = float("-inf")

    def margin_bytes(self, target: int, segment_bytes: int) -> int:
        return max(2 * segment_bytes, target // 4)

    def budget(self, reports: Iterable[HeadroomReport], current: int, now: float = 0.0) -> int:
        """The page count the shards should have allocated; `current` when nothing should change
        (no report, a report without page size, or every rank inside its dead band). `now`: seconds
        on any monotonic clock (the growth phase is measured on it)."""
        reps = [r for r in reports if r.page_bytes > 0 and r.total_device_bytes > 0]
        if not reps:
            return current
        seg = max(max(r.segment_pages for r in reps), 1)
        allocated = min(r.allocated for r in reps)
        growing = now < self.grow_until
        short, room = 0, None
        for r in reps:
            target = self.target.for_total(r.total_device_bytes)
            if r.free_device_bytes < target:
                short = max(short, -(-(target - r.free_device_bytes) // r.page_bytes))
            seg_bytes = seg * r.page_bytes
            margin = 2 * seg_bytes if growing else self.margin_bytes(target, seg_bytes)
            if r.free_device_bytes > target + margin:
                pages = (r.free_device_bytes - target - seg_bytes) // r.page_bytes
            else:
                pages = 0
            room = pages if room is None else min(room, pages)
        if short > 0:
            self.grow_until = float("-inf")
            return max(0, (allocated - short) // seg * seg)
        if room and allocated < self.num_pages:
            grown = min((allocated + room) // seg * seg, self.num_pages)
            if grown > allocated:
                self.grow_until = now + self.settle_s
            return max(grown, allocated)
        return current


DEFAULT_HEADROOM = HeadroomTarget()  # DEFAULT_HEADROOM_FRACTION of each rank's total memory
