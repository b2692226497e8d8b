"""Discrete-event simulator of one serving engine with iteration-level continuous batching.

Per iteration (the same loop as the live router, see `chameleon.core.sched.base`):
  arrivals up to `now` join the scheduler; plan = scheduler.schedule(now, ctx) (it admits through
  MemoryManager.try_admit); squashed requests are released and their output discarded; adapters of
  new admissions that are not resident are loaded synchronously over the host link before the step
  (S-LoRA), and a step also waits for prefetches still in flight for its adapters; then ONE step =
  prefill of the admitted + one decode token for every running request, timed by the cost model;
  finished requests leave (scheduler.finish + memory.release); queued requests' adapters are
  prefetched into free pages, overlapping the following steps (the link is a separate timeline).

Time bookkeeping: `tick` counts steps. A request admitted at step a emits token j at step a + j - 1,
so its progress is implied by the tick and decode-only stretches (no admission possible, no finish,
no arrival) are advanced in a tight scalar loop without touching requests. While requests wait,
`schedule()` is still called at every arrival, every finish and at least every `max_idle_skip_s`.
TTFT = first-token time - arrival; TBT gaps = time between consecutive tokens of a request (every
running request emits one token per step, so a step contributes one gap per decoding request).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from chameleon.core.adapters import AdapterSpec, spec_table
from chameleon.core.allocator import PagePool
from chameleon.core.cache import make_cache
from chameleon.core.memory_manager import MemoryManager
from chameleon.core.request import Request
from chameleon.core.sched import Plan, ScheduleContext, make_scheduler
from chameleon.sim.config import SimConfig, SimResult, make_sim_predictor
from chameleon.sim.cost import CostModel
from chameleon.sim.profile import Profile
from chameleon.workload import AdapterInfo, WorkItem


class Simulator:
    """One run: a workload through one (scheduler, cache) pair. Use `run()` once."""

    def __init__(self, items: Sequence[WorkItem], adapters: Sequence[AdapterInfo], profile: Profile,
                 config: SimConfig) -> None:
        self.items, self.cfg, self.cost = list(items), config, CostModel(profile)
        specs = [AdapterSpec(a.adapter_id, a.rank, profile.bytes_for_rank(a.rank),
                             profile.pages_for_rank(a.rank)) for a in adapters]
        self.rank = {s.adapter_id: s.rank for s in specs}
        self.nbytes = {s.adapter_id: s.nbytes for s in specs}
        cache = make_cache(config.cache, config.cache_window_s)
        self.memory = MemoryManager(PagePool(profile.num_pages), cache, profile.block_size, spec_table(specs))
        mlq_sched = config.scheduler in ("chameleon", "static4")
        mlq = {"slo_s": config.slo_s, **dict(config.mlq)} if mlq_sched else {}
        predictor = make_sim_predictor(config.predictor, config.seed)
        self.sched = make_scheduler(config.scheduler, predictor=predictor,
                                    max_batch_size=config.max_batch_size,
                                    max_prefill_tokens=config.max_prefill_tokens, **mlq)
        self._needs_running = config.scheduler in ("chameleon", "static4")
        self._check_fits(profile)
        n = len(self.items)
        self.res = SimResult(n=n, ttft=[0.0] * n, e2e=[0.0] * n, load_s=[0.0] * n)
        self.running: dict[int, Request] = {}
        self.admit_tick: dict[int, int] = {}
        self.finish_heap: list[tuple[int, int]] = []
        self.tick, self.sum_in, self.sum_a, self.rank_sum = 0, 0, 0, 0
        self.link_free, self.last_end, self.est_step = 0.0, 0.0, profile.weight_read_s
        self.ready_at: dict[str, float] = {}

    def _check_fits(self, profile: Profile) -> None:
        cap = self.memory.pool.capacity
        for w in self.items:
            if w.adapter_id is not None and w.adapter_id not in self.rank:
                raise ValueError(f"request {w.id} uses unknown adapter {w.adapter_id!r}")
            req = Request(w.id, w.adapter_id, w.input_tokens, w.output_tokens, 0.0)
            pages = self.memory.kv_pages_for(req)
            pages += 0 if w.adapter_id is None else profile.pages_for_rank(self.rank[w.adapter_id])
            if pages > cap:
                raise ValueError(f"request {w.id} ({w.input_tokens}+{w.output_tokens} tokens) needs {pages} "
                                 f"pages but the pool has {cap}: lower --length-scale or set --max-input")

    # ---- main loop ------------------------------------------------------------------------------
    def run(self) -> SimResult:
        items, n, i, now = self.items, len(self.items), 0, 0.0
        while True:
            while i < n and items[i].arrival <= now:
                w = items[i]
                self.sched.add(Request(w.id, w.adapter_id, w.input_tokens, w.output_tokens, w.arrival,
                                       true_output_tokens=w.output_tokens), now)
                i += 1
            next_arrival = items[i].arrival if i < n else float("inf")
            if not self.running and not self.sched.num_waiting():
                if i >= n:
                    break
                now = self.last_end = next_arrival
                continue
            now = self._iteration(now, next_arrival)
        self.res.iterations = self.tick
        self.res.memory_stats = self.memory.stats()
        self.res.sched_stats = self.sched.stats()
        self.res.squashes = self.sched.squashed_total
        return self.res

    def _ctx(self) -> ScheduleContext:
        running: Sequence[Request] = ()
        if self._needs_running:
            for rid, req in self.running.items():
                req.generated = self.tick - self.admit_tick[rid] + 1
            running = list(self.running.values())
        return ScheduleContext(self.memory, running, est_step_s=self.est_step,
                               est_prefill_s_per_token=self.cost.profile.compute_s_per_token)

    def _iteration(self, now: float, next_arrival: float) -> float:
        if not self.sched.num_waiting():    # nothing to admit: decode until the next arrival or finish
            return self._decode_stretch(now, next_arrival)
        plan = self.sched.schedule(now, self._ctx())
        for req in plan.squash:
            self._stop(req.id)
            self.memory.release(req.id, now)
        self.memory.take_offloads()
        if plan.admit or plan.squash:
            return self._step(plan, now)
        if not self.running:
            if next_arrival == float("inf"):
                raise RuntimeError(f"simulation stuck at t={now:.3f}s: {self.sched.num_waiting()} requests "
                                   "wait, nothing runs and the scheduler admits none")
            self.last_end = next_arrival
            return next_arrival
        horizon = next_arrival
        if self.sched.num_waiting():
            horizon = min(horizon, now + self.cfg.max_idle_skip_s)
        return self._decode_stretch(now, horizon)

    # ---- steps ----------------------------------------------------------------------------------
    def _loads(self, plan: Plan, now: float) -> float:
        """Start time of the step: after synchronous loads of missing adapters and pending prefetches."""
        start, sync = now, []
        for req in plan.admit:
            aid = req.adapter_id
            if aid is None:
                continue
            if plan.admissions[req.id].load_adapter:
                sync.append(req)
            else:
                start = max(start, self.ready_at.get(aid, 0.0))
        link = max(now, self.link_free)
        for req in sync:
            b = self.nbytes[req.adapter_id]  # type: ignore[index]
            link += self.cost.load_time(b)
            self.ready_at[req.adapter_id] = link  # type: ignore[index]
            self.res.load_s[req.id] = self.cost.load_time(b)
            self.res.bytes_loaded += b
            self.res.loads += 1
        if sync:
            self.link_free = link
            start = max(start, link)
        return start

    def _step(self, plan: Plan, now: float) -> float:
        start = self._loads(plan, now)
        self.res.load_stall_s += start - now
        decoders = len(self.running)
        ctx = self.sum_in + decoders * (self.tick + 1) - self.sum_a
        prefill = sum(r.input_tokens for r in plan.admit)
        lora = self.rank_sum + sum(r.input_tokens * self.rank.get(r.adapter_id, 0)  # type: ignore[arg-type]
                                   for r in plan.admit)
        dt = self.cost.step_time(prefill + decoders, lora, ctx)
        end = start + dt
        self.tick += 1
        if decoders:
            self.res.tbt_gaps.append(end - self.last_end)
            self.res.tbt_weights.append(decoders)
            self.est_step = dt
        for req in plan.admit:
            self._start(req, end)
        self._finish_due(end)
        self.last_end = end
        self._prefetch(end)
        return end

    def _decode_stretch(self, now: float, horizon: float) -> float:
        """Decode-only steps until the next finish or until time reaches `horizon`."""
        self._prefetch(now)
        b = len(self.running)
        due = self.finish_heap[0][0] - self.tick
        fixed = self.cost.step_time(b, self.rank_sum, 0)
        per_ctx = self.cost.profile.kv_read_s_per_token
        ctx = self.sum_in + b * (self.tick + 1) - self.sum_a
        gaps, t, k = self.res.tbt_gaps, now, 0
        while k < due:
            dt = fixed + per_ctx * ctx
            t += dt
            gaps.append(dt)
            ctx += b
            k += 1
            if t >= horizon:
                break
        self.res.tbt_weights.extend([b] * k)
        self.tick += k
        self.est_step = fixed + per_ctx * ctx
        self._finish_due(t)
        self.last_end = t
        return t

    # ---- request bookkeeping ----------------------------------------------------------------------
    def _start(self, req: Request, end: float) -> None:
        a = self.tick
        self.running[req.id] = req
        self.admit_tick[req.id] = a
        self.sum_in += req.input_tokens
        self.sum_a += a
        self.rank_sum += self.rank.get(req.adapter_id, 0)  # type: ignore[arg-type]
        self.res.ttft[req.id] = end - req.arrival
        heapq.heappush(self.finish_heap, (a + req.max_new_tokens - 1, req.id))

    def _stop(self, rid: int) -> Request:
        req = self.running.pop(rid)
        self.sum_in -= req.input_tokens
        self.sum_a -= self.admit_tick.pop(rid)
        self.rank_sum -= self.rank.get(req.adapter_id, 0)  # type: ignore[arg-type]
        return req

    def _finish_due(self, now: float) -> None:
        heap = self.finish_heap
        while heap and heap[0][0] <= self.tick:
            due, rid = heapq.heappop(heap)
            if rid not in self.running or self.admit_tick[rid] + self.running[rid].max_new_tokens - 1 != due:
                continue  # stale entry of a squashed (and maybe re-admitted) request
            req = self._stop(rid)
            self.sched.finish(rid, now, req.max_new_tokens)
            self.memory.release(rid, now)
            self.res.e2e[rid] = now - req.arrival
            self.res.last_finish = max(self.res.last_finish, now)
            self.res.finished += 1
        self.memory.take_offloads()

    def _prefetch(self, now: float) -> None:
        if not self.cfg.prefetch or not self.sched.num_waiting():
            return
        waiting = self.sched.waiting(self.cfg.prefetch_depth)
        reserve = self.memory.kv_pages_for(waiting[0])
        for aid, _pages in self.memory.prefetch([r.adapter_id for r in waiting], now, reserve_pages=reserve):
            self.link_free = max(self.link_free, now) + self.cost.load_time(self.nbytes[aid])
            self.ready_at[aid] = self.link_free
            self.res.bytes_loaded += self.nbytes[aid]
            self.res.prefetches += 1
