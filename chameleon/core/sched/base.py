"""Scheduler contract shared by the simulator and the live router.

Loop (per engine iteration):
    plan = scheduler.schedule(now, ScheduleContext(memory, running, est_step_s))
    engine: offload memory.take_offloads() and each admission's `evicted`, load adapters of new
            admissions (plan.admissions[req.id]), prefill plan.admit, decode the running batch,
            stop plan.squash (the scheduler already re-queued them; the engine calls
            memory.release(req.id) and discards their output);
    on finish: scheduler.finish(id, now, n) + memory.release(id); on cancel: scheduler.cancel + release;
    memory.prefetch([r.adapter_id for r in scheduler.waiting(limit)], now, reserve_pages=...).

Schedulers admit through `ctx.memory.try_admit` themselves, so admission and allocation are one step,
and they honour `SchedulerLimits` (running batch size, prompt tokens admitted per iteration).
Contract additions beyond helpers/policy_contract.md (all backward compatible):
- `Plan.admissions` {req_id: Admission}; `Request.seq` (arrival order) and `Request.generated` (the
  engine keeps it current for running requests: the bypass cost estimate reads it);
- `waiting(limit)`, `SchedulerLimits`, `ScheduleContext.remaining_s/cost/est_prefill_s_per_token`;
- MemoryManager: `take_offloads()` (drops outside an admission), `admissible(req)` (reject requests
  that can never fit, up front), `shortfall`, `can_admit`, `releasable_pages`, `set_queue_view`;
  `on_headroom` takes `chameleon.core.headroom.HeadroomReport` (one or a list) and `now`.
- Chameleon quotas charge `need` = In + max_new_tokens + adapter tokens by default (MlqConfig.need;
  "predicted" gives the paper's In + Out_pred + adapter), because KV is reserved for max_new_tokens.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from chameleon.core.memory_manager import Admission, MemoryManager
from chameleon.core.predictor import OnlinePredictor, OutputPredictor
from chameleon.core.request import AdapterDemand, Request


@dataclass(frozen=True, slots=True)
class SchedulerLimits:
    """Engine limits. max_prefill_tokens caps prompt tokens admitted per iteration (TGI's
    max_batch_prefill_tokens); a single prompt longer than it is admitted alone in its iteration."""

    max_batch_size: int = 256
    max_prefill_tokens: int = 4096

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_prefill_tokens < 1:
            raise ValueError("max_batch_size and max_prefill_tokens must be >= 1")


@dataclass(frozen=True, slots=True)
class Plan:
    """What joins the batch now. `squash`: running requests to stop and discard (already re-queued)."""

    admit: list[Request] = field(default_factory=list)
    squash: list[Request] = field(default_factory=list)
    admissions: dict[int, Admission] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ScheduleContext:
    """The memory state and a cost model. `cost(req)` (optional) returns the seconds until `req`
    finishes; otherwise the estimate is prompt * est_prefill_s_per_token (if not started) plus
    (predicted_output - generated) * est_step_s."""

    memory: MemoryManager
    running: Sequence[Request] = ()
    est_step_s: float = 0.05
    est_prefill_s_per_token: float = 0.0
    cost: Callable[[Request], float] | None = None

    def remaining_s(self, req: Request) -> float:
        if self.cost is not None:
            return self.cost(req)
        prefill = req.input_tokens * self.est_prefill_s_per_token if req.generated == 0 else 0.0
        return prefill + max(0, req.predicted_output - req.generated) * self.est_step_s


class BatchBudget:
    """Per-iteration limits: free batch slots and prompt tokens left."""

    __slots__ = ("admitted", "prefill_left", "slots")

    def __init__(self, limits: SchedulerLimits, running: int) -> None:
        self.slots = limits.max_batch_size - running
        self.prefill_left = limits.max_prefill_tokens
        self.admitted = 0

    def allows(self, req: Request) -> bool:
        return self.slots > 0 and (req.input_tokens <= self.prefill_left or self.admitted == 0)

    @property
    def exhausted(self) -> bool:
        return self.slots <= 0 or self.prefill_left <= 0

    def take(self, req: Request) -> None:
        self.slots -= 1
        self.prefill_left -= req.input_tokens
        self.admitted += 1


class Scheduler(ABC):
    """Base: owns the running set, the queued-adapter demand, arrival order and the predictor.

    Subclasses implement `_enqueue`, `_remove_queued`, `_requeue`, `waiting`, `num_waiting` and
    `schedule`; they admit with `_admit`, which checks the BatchBudget and asks memory.
    """

    name = "base"

    def __init__(self, predictor: OutputPredictor | None = None,
                 limits: SchedulerLimits | None = None) -> None:
        self.predictor = predictor if predictor is not None else OnlinePredictor()
        self.limits = limits if limits is not None else SchedulerLimits()
        self.demand = AdapterDemand()
        self._running: dict[int, Request] = {}
        self._seq = itertools.count()
        self.squashed_total = 0
        self.admitted_total = 0

    # ---- public API ------------------------------------------------------------------------------
    def add(self, req: Request, now: float) -> None:
        """A request arrives. O(1) or O(log n); classification may be deferred to `schedule`."""
        if req.seq < 0:
            req.seq = next(self._seq)
        req.predicted_output = self.predictor.predict(req)
        self.demand.add(req.adapter_id)
        self._enqueue(req, now)

    @abstractmethod
    def schedule(self, now: float, ctx: ScheduleContext) -> Plan:
        """Decide what joins the batch now; admitted requests already hold memory (Plan.admissions)."""

    def finish(self, req_id: int, now: float, output_tokens: int) -> Request | None:
        """A running request completed: return its quota and teach the predictor. None if unknown."""
        req = self._running.pop(req_id, None)
        if req is not None:
            self.predictor.observe(req.adapter_id, output_tokens)
            self._on_done(req, now, "finish")
        return req

    def cancel(self, req_id: int, now: float) -> bool:
        """Drop a queued or running request (running: its quota is returned). False if unknown."""
        req = self._running.pop(req_id, None)
        if req is not None:
            self._on_done(req, now, "cancel")
            return True
        req = self._remove_queued(req_id)
        if req is None:
            return False
        self.demand.remove(req.adapter_id)
        return True

    @abstractmethod
    def waiting(self, limit: int | None = None) -> list[Request]:
        """Queued requests in (approximate) dispatch order, at most `limit` of them."""

    @abstractmethod
    def num_waiting(self) -> int: ...

    def running(self) -> list[Request]:
        return list(self._running.values())

    def stats(self) -> dict:
        return {"scheduler": self.name, "waiting": self.num_waiting(), "running": len(self._running),
                "admitted": self.admitted_total, "squashes": self.squashed_total}

    # ---- for subclasses --------------------------------------------------------------------------
    @abstractmethod
    def _enqueue(self, req: Request, now: float) -> None: ...

    @abstractmethod
    def _remove_queued(self, req_id: int) -> Request | None: ...

    def _on_done(self, req: Request, now: float, reason: str) -> None:  # noqa: B027 (optional hook)
        """Hook: a running request left; reason is "finish", "cancel" or "squash". Return quota here."""

    def _admit(self, req: Request, now: float, ctx: ScheduleContext, budget: BatchBudget,
               plan: Plan) -> bool:
        """Try to start `req` (already removed from its queue by the caller only on success)."""
        if not budget.allows(req) or ctx.memory.admission(req.id) is not None:
            return False  # limits reached, or a squashed request whose memory is not released yet
        adm = ctx.memory.try_admit(req, now, self.demand)
        if adm is None:
            return False
        budget.take(req)
        self.demand.remove(req.adapter_id)
        req.admitted_at = now
        req.generated = 0
        self._running[req.id] = req
        self.admitted_total += 1
        plan.admit.append(req)
        plan.admissions[req.id] = adm
        return True

    def _squash(self, req: Request, now: float, plan: Plan) -> None:
        """Stop a running request and re-queue it at its original position (by `seq`)."""
        if self._running.pop(req.id, None) is None:
            return
        self._on_done(req, now, "squash")
        req.squashes += 1
        req.admitted_at = None
        req.generated = 0
        self.squashed_total += 1
        self.demand.add(req.adapter_id)
        self._requeue(req)
        plan.squash.append(req)

    def _requeue(self, req: Request) -> None:
        """Put a squashed request back at its original position. Only schedulers that squash need it."""
        raise NotImplementedError(f"{self.name} never squashes")
