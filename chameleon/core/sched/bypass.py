"""Opportunistic bypass with squash (Chameleon MLQ).

A head request R1 that fits its queue's quota but whose adapter cannot fit in memory even after
evicting every idle adapter (`memory.adapter_fits` false) would block its queue. A younger request R2
of the same queue (among the next `lookahead`) may go first when it fits quota and memory now and is
predicted to finish before R1's memory frees: t_finish(R2) = ctx.remaining_s(R2) < t_free(R1), the
time at which running requests, by predicted remaining time, release enough pages for R1.
If the prediction is wrong, i.e. R1 is still waiting, cannot be admitted, and would be admissible
if R2's pages were released, R2 is squashed: the engine stops and frees it, and it is re-queued at
its original position (behind R1). R1 is then not bypassed again in that same iteration, and in
the next iteration (once the engine released R2) it is tried before every queue, so that smaller
queues cannot take the pages the squash freed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from chameleon.core.request import Request
from chameleon.core.sched.base import BatchBudget, Plan, ScheduleContext
from chameleon.core.sched.ledger import QuotaLedger


class BypassHost(Protocol):
    """What the tracker needs from the MLQ scheduler (chameleon.core.sched.mlq.ChameleonScheduler)."""

    ledger: QuotaLedger

    def queue_index(self, req_id: int) -> int | None: ...
    def queue(self, q: int) -> Sequence[Request]: ...
    def need_in(self, q: int, req: Request) -> int: ...
    def admit_now(self, req: Request, now: float, ctx: ScheduleContext, budget: BatchBudget,
                  plan: Plan) -> bool: ...
    def take(self, q: int, index: int = 0) -> Request: ...
    def charge_admitted(self, req: Request, q: int, parts: list[tuple[int, int]]) -> None: ...
    def is_running(self, req_id: int) -> bool: ...
    def running(self) -> list[Request]: ...
    def squash(self, req: Request, now: float, plan: Plan) -> None: ...


def predict_free_s(head: Request, ctx: ScheduleContext, running: list[Request]) -> float:
    """Seconds until running requests (earliest predicted finish first) free enough pages for `head`."""
    short = ctx.memory.shortfall(head)
    if short <= 0:
        return 0.0
    freed = 0
    for t, pages in sorted((ctx.remaining_s(r), ctx.memory.releasable_pages(r.id)) for r in running):
        freed += pages
        if freed >= short:
            return t
    return math.inf


class BypassTracker:
    """Active bypasses (R1 passed by R2) and the squash rule; counts bypasses and squashes."""

    def __init__(self, lookahead: int) -> None:
        self.lookahead = lookahead
        self.active: list[tuple[Request, Request]] = []
        self.total = 0
        self.squashes = 0
        self._held_back: set[int] = set()
        self._retry: list[Request] = []

    def admit_retries(self, sched: BypassHost, now: float, ctx: ScheduleContext,
                      budget: BatchBudget, plan: Plan) -> None:
        """Heads whose blocker was squashed last iteration go first, if still at the head of a queue."""
        retry, self._retry = self._retry, []
        for r1 in retry:
            q = sched.queue_index(r1.id)
            if q is None or q < 0 or sched.queue(q)[0] is not r1:
                continue
            charge = sched.ledger.own_charge(q, sched.need_in(q, r1))
            if charge is not None and sched.admit_now(r1, now, ctx, budget, plan):
                sched.charge_admitted(sched.take(q), q, [(q, charge)])

    def try_bypass(self, sched: BypassHost, q: int, now: float, ctx: ScheduleContext,
                   budget: BatchBudget, plan: Plan) -> None:
        """Queue q's head could not be admitted: let younger requests pass it if the rule allows."""
        dq = sched.queue(q)
        head = dq[0]
        mem = ctx.memory
        if head.adapter_id is None or head.id in self._held_back or mem.adapter_fits(head.adapter_id):
            return
        running = list(ctx.running) if ctx.running else sched.running()
        t_free = predict_free_s(head, ctx, running)
        index, scanned = 1, 0
        while index < len(dq) and scanned < self.lookahead and not budget.exhausted:
            r2 = dq[index]
            scanned += 1
            need = sched.need_in(q, r2)
            ok = sched.ledger.available(q) >= need and mem.can_admit(r2) \
                and ctx.remaining_s(r2) < t_free
            if ok and sched.admit_now(r2, now, ctx, budget, plan):
                sched.charge_admitted(sched.take(q, index), q, [(q, need)])
                self.active.append((head, r2))
                self.total += 1
            else:
                index += 1

    def check_squashes(self, sched: BypassHost, now: float, ctx: ScheduleContext,
                       plan: Plan) -> None:
        """Squash R2 where R1's memory freed before R2 finished (R2 is now what blocks R1)."""
        self._held_back = set()
        keep: list[tuple[Request, Request]] = []
        mem = ctx.memory
        for r1, r2 in self.active:
            if not sched.is_running(r2.id) or sched.queue_index(r1.id) is None:
                continue  # resolved: R2 finished (or was cancelled) or R1 left the queue
            if r1.id not in self._held_back and not mem.can_admit(r1) \
                    and mem.shortfall(r1, mem.releasable_pages(r2.id)) <= 0:
                sched.squash(r2, now, plan)
                self.squashes += 1
                self._held_back.add(r1.id)
                self._retry.append(r1)
                continue
            keep.append((r1, r2))
        self.active = keep
