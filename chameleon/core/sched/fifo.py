"""Baselines: FIFO (S-LoRA) and shortest-job-first."""

from __future__ import annotations

import heapq
import itertools
from collections import deque

from chameleon.core.request import Request
from chameleon.core.sched.base import BatchBudget, Plan, ScheduleContext, Scheduler


class FifoScheduler(Scheduler):
    """S-LoRA: strict arrival order; admit from the head while memory and limits allow; stop at the
    first request that does not fit (no skipping, so head-of-line blocking is part of the baseline)."""

    name = "fifo"

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._queue: deque[Request] = deque()

    def _enqueue(self, req: Request, now: float) -> None:
        self._queue.append(req)

    def _remove_queued(self, req_id: int) -> Request | None:
        for req in self._queue:
            if req.id == req_id:
                self._queue.remove(req)
                return req
        return None

    def schedule(self, now: float, ctx: ScheduleContext) -> Plan:
        plan = Plan()
        budget = BatchBudget(self.limits, len(self._running))
        while self._queue and self._admit(self._queue[0], now, ctx, budget, plan):
            self._queue.popleft()
        return plan

    def waiting(self, limit: int | None = None) -> list[Request]:
        return list(itertools.islice(self._queue, limit))

    def num_waiting(self) -> int:
        return len(self._queue)


class SjfScheduler(Scheduler):
    """Shortest predicted job first: key = predicted output (+ input tokens when `include_input`),
    ties by arrival. Admits shortest first and stops at the first that does not fit. Long requests
    can starve under load; that is the baseline's known weakness."""

    name = "sjf"

    def __init__(self, include_input: bool = True, **kw) -> None:
        super().__init__(**kw)
        self.include_input = include_input
        self._heap: list[tuple[int, int, Request]] = []
        self._queued: dict[int, Request] = {}

    def _key(self, req: Request) -> tuple[int, int, Request]:
        size = req.predicted_output + (req.input_tokens if self.include_input else 0)
        return (size, req.seq, req)

    def _enqueue(self, req: Request, now: float) -> None:
        self._queued[req.id] = req
        heapq.heappush(self._heap, self._key(req))

    def _remove_queued(self, req_id: int) -> Request | None:
        return self._queued.pop(req_id, None)  # heap entry is skipped lazily

    def _head(self) -> Request | None:
        while self._heap:
            req = self._heap[0][2]
            if self._queued.get(req.id) is req:
                return req
            heapq.heappop(self._heap)
        return None

    def schedule(self, now: float, ctx: ScheduleContext) -> Plan:
        plan = Plan()
        budget = BatchBudget(self.limits, len(self._running))
        while (head := self._head()) is not None and self._admit(head, now, ctx, budget, plan):
            heapq.heappop(self._heap)
            del self._queued[head.id]
        return plan

    def waiting(self, limit: int | None = None) -> list[Request]:
        """Shortest first. With a limit: best-first walk of the heap tree, O(limit log limit)."""
        heap, live = self._heap, self._queued
        if limit is None:
            return [e[2] for e in sorted(e for e in heap if live.get(e[2].id) is e[2])]
        out: list[Request] = []
        frontier = [(heap[0][:2], 0)] if heap else []
        while frontier and len(out) < limit:
            _, i = heapq.heappop(frontier)
            req = heap[i][2]
            if live.get(req.id) is req:
                out.append(req)
            for child in (2 * i + 1, 2 * i + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child][:2], child))
        return out

    def num_waiting(self) -> int:
        return len(self._queued)
