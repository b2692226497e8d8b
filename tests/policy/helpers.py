"""Builders and a minimal engine loop for policy tests (drives the real objects, fakes nothing)."""

from __future__ import annotations

from chameleon.core.adapters import AdapterSpec, spec_table
from chameleon.core.allocator import PagePool
from chameleon.core.cache import make_cache
from chameleon.core.memory_manager import MemoryManager
from chameleon.core.request import Request
from chameleon.core.sched.base import ScheduleContext, Scheduler

RANK_PAGES = {8: 1, 16: 2, 32: 4, 64: 8, 128: 16}


def adapter_specs(n_per_rank: int = 2) -> list[AdapterSpec]:
    return [AdapterSpec(f"r{rank}-{i}", rank, pages * 4096, pages)
            for rank, pages in RANK_PAGES.items() for i in range(n_per_rank)]


def memory(pages: int, specs: list[AdapterSpec] | None = None, cache: str = "chameleon",
           block_size: int = 1) -> MemoryManager:
    """A pool of `pages` usable pages (page 0 reserved on top)."""
    specs = adapter_specs() if specs is None else specs
    return MemoryManager(PagePool(pages + 1), make_cache(cache), block_size, spec_table(specs))


def req(rid: int, adapter: str | None = None, inp: int = 10, max_new: int | None = None,
        out: int | None = None, t: float = 0.0) -> Request:
    """max_new defaults to `out` (or 10); the true output defaults to max_new."""
    max_new = max_new if max_new is not None else (out if out is not None else 10)
    return Request(rid, adapter, inp, max_new, t, true_output_tokens=max_new if out is None else out)


class Engine:
    """One decode token per running request per iteration; finishes at true_output_tokens."""

    def __init__(self, sched: Scheduler, mem: MemoryManager, step_s: float = 0.05) -> None:
        self.sched, self.mem, self.step_s = sched, mem, step_s
        self.running: dict[int, Request] = {}
        self.now = 0.0
        self.admitted_at_iter: dict[int, int] = {}
        self.iteration = 0
        self.squashed = 0

    def add(self, r: Request) -> None:
        r.arrival = self.now
        self.sched.add(r, self.now)

    def step(self) -> list[Request]:
        self.iteration += 1
        self.now += self.step_s
        plan = self.sched.schedule(self.now, ScheduleContext(self.mem, list(self.running.values()),
                                                             est_step_s=self.step_s))
        for r in plan.squash:
            self.running.pop(r.id)
            self.mem.release(r.id, self.now)
            self.squashed += 1
        for r in plan.admit:
            self.running[r.id] = r
            self.admitted_at_iter.setdefault(r.id, self.iteration)
        for r in list(self.running.values()):
            r.generated += 1
            if r.generated >= (r.true_output_tokens or r.max_new_tokens):
                del self.running[r.id]
                self.sched.finish(r.id, self.now, r.generated)
                self.mem.release(r.id, self.now)
        self.mem.take_offloads()
        self.mem.prefetch([w.adapter_id for w in self.sched.waiting(8)], self.now)
        return plan.admit

    def drain(self, max_iter: int = 10_000) -> None:
        while (self.running or self.sched.num_waiting()) and max_iter:
            self.step()
            max_iter -= 1
