"""Scheduling-step cost with a 1,000-request backlog: `python -m chameleon.tools.bench.step`.

Pure Python, no shard: the real schedulers and MemoryManager on a synthetic pool, driven by a toy
engine (one decode token per running request per step). Per scheduler:
1. warm-up: `--warm` requests over a few seconds, drained (the first refresh happens, the window and
   the predictor fill, some completions are measured);
2. burst: `--queued` requests arrive at once (add() is timed per request), then the next schedule()
   is timed on its own ("burst step": it used to classify the whole burst and refresh);
3. steady backlog: `--steps` more schedule() calls, each preceded by new arrivals that top the backlog
   up to `--queued`; refreshes come from the time trigger (`--t-refresh` seconds of simulated time,
   `--step-s` per step) and the count trigger (MlqConfig.refresh_requests). Every step is timed;
   refresh steps are also reported on their own.
`digest` hashes every decision (admitted and squashed ids per step), so two implementations can be
checked for identical behaviour. `--reference DIR` runs this same file against another checkout (a
`git worktree` of an older commit) in a subprocess, alternating with the current tree, `--repeats` times
each; the table then shows both. Times are in milliseconds; statistics are medians over repeats.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

SCHEDULERS = ("chameleon", "static4", "fifo", "sjf")
RANKS = (8, 16, 32, 64, 128)


def _setup(name: str, a: argparse.Namespace) -> tuple:
    from chameleon.core.adapters import AdapterSpec, spec_table
    from chameleon.core.allocator import PagePool
    from chameleon.core.cache import make_cache
    from chameleon.core.memory_manager import MemoryManager
    from chameleon.core.sched import make_scheduler

    block = 16
    specs = [AdapterSpec(f"a{i}", RANKS[i % len(RANKS)], RANKS[i % len(RANKS)] * 8192,
                         RANKS[i % len(RANKS)] // 8) for i in range(a.adapters)]
    mem = MemoryManager(PagePool(a.pages + 1), make_cache("chameleon"), block, spec_table(specs))
    cfg: dict[str, object] = {"t_refresh_s": a.t_refresh} if name in ("chameleon", "static4") else {}
    if cfg and a.refresh_step_work is not None:
        cfg["refresh_step_work"] = None if a.refresh_step_work == 0 else a.refresh_step_work
    return mem, make_scheduler(name, max_batch_size=a.max_batch, **cfg), [s.adapter_id for s in specs]


def run_one(name: str, a: argparse.Namespace, seed: int) -> dict[str, object]:
    """One scheduler, one seed: the three phases above. Returns the statistics (ms) and the digest."""
    from chameleon.core.request import Request
    from chameleon.core.sched import ScheduleContext

    rng = random.Random(seed)
    clock = time.thread_time if a.clock == "cpu" else time.perf_counter
    mem, sched, adapters = _setup(name, a)
    running: dict[int, Request] = {}
    ids = iter(range(1 << 40))
    now = 0.0
    digest = hashlib.sha256()

    def new_request(t: float) -> Request:
        out = max(1, int(rng.lognormvariate(3.5, 1.0)))
        inp = max(1, min(2000, int(rng.lognormvariate(5.0, 1.0))))
        aid = None if rng.random() < 0.05 else rng.choice(adapters)
        return Request(next(ids), aid, inp, min(out, 512), t, true_output_tokens=min(out, 512))

    def step() -> tuple[float, bool]:
        nonlocal now
        now += a.step_s
        before = getattr(sched, "refreshes", 0)
        ctx = ScheduleContext(mem, list(running.values()), est_step_s=a.step_s)
        t0 = clock()
        plan = sched.schedule(now, ctx)
        dt = clock() - t0
        digest.update(repr(([r.id for r in plan.admit], [r.id for r in plan.squash])).encode())
        for r in plan.squash:
            running.pop(r.id)
            mem.release(r.id, now)
        for r in plan.admit:
            running[r.id] = r
        for r in list(running.values()):
            r.generated += 1
            if r.generated >= (r.true_output_tokens or r.max_new_tokens):
                del running[r.id]
                sched.finish(r.id, now, r.generated)
                mem.release(r.id, now)
        mem.take_offloads()
        waiting = sched.waiting(8)
        mem.prefetch([w.adapter_id for w in waiting], now)
        return dt, getattr(sched, "refreshes", 0) != before

    for i in range(a.warm):  # warm-up: arrivals spread over the steps, then drained
        sched.add(new_request(now), now)
        if i % 4 == 3:
            step()
    while running or sched.num_waiting():
        step()
    t0 = clock()
    for _ in range(a.queued):
        sched.add(new_request(now), now)
    add_s = clock() - t0
    burst_s, _ = step()
    steps: list[float] = []
    refresh: list[float] = []
    for _ in range(a.steps):
        for _ in range(a.queued - sched.num_waiting()):
            sched.add(new_request(now), now)
        dt, refreshed = step()
        steps.append(dt)
        if refreshed:
            refresh.append(dt)
    steps.sort()
    return {"burst_ms": 1e3 * burst_s, "add_us": 1e6 * add_s / a.queued,
            "p50_ms": 1e3 * steps[len(steps) // 2], "p99_ms": 1e3 * steps[int(0.99 * (len(steps) - 1))],
            "max_ms": 1e3 * steps[-1], "refreshes": len(refresh),
            "refresh_max_ms": 1e3 * max(refresh, default=0.0),
            "refresh_p50_ms": 1e3 * statistics.median(refresh) if refresh else 0.0,
            "digest": digest.hexdigest()[:12]}


def run_all(a: argparse.Namespace) -> dict[str, list[dict[str, object]]]:
    return {name: [run_one(name, a, a.seed + r) for r in range(a.repeats)] for name in a.schedulers}


def summarize(runs: list[dict[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {k: statistics.median(float(r[k]) for r in runs)  # type: ignore[arg-type]
                              for k in runs[0] if k != "digest"}
    out["worst_ms"] = max(max(float(r["burst_ms"]), float(r["max_ms"])) for r in runs)  # type: ignore[arg-type]
    out["digest"] = ",".join(str(r["digest"]) for r in runs)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m chameleon.tools.bench.step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--schedulers", nargs="+", default=list(SCHEDULERS), choices=SCHEDULERS)
    p.add_argument("--queued", type=int, default=1000, help="backlog size")
    p.add_argument("--steps", type=int, default=400, help="timed steps with the backlog kept full")
    p.add_argument("--warm", type=int, default=400, help="warm-up requests")
    p.add_argument("--repeats", type=int, default=3, help="runs per scheduler (seeds seed..seed+n-1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step-s", type=float, default=0.02, help="simulated seconds per step")
    p.add_argument("--t-refresh", type=float, default=1.0, help="MlqConfig.t_refresh_s (simulated s)")
    p.add_argument("--pages", type=int, default=2048, help="pool pages (block size 16)")
    p.add_argument("--adapters", type=int, default=100)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--refresh-step-work", type=int, default=None, help="MlqConfig.refresh_step_work for "
                   "the current tree (0: None, every refresh in one step); the reference keeps its own")
    p.add_argument("--reference", type=Path, default=None,
                   help="another checkout's root (e.g. a git worktree of the old commit) to compare with")
    p.add_argument("--no-gc", action="store_true", help="disable Python's cyclic GC while measuring "
                   "(separates the scheduler's own work from collection pauses, which hit any code)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall: perf_counter (what a "
                   "client sees); cpu: this thread's CPU time (leaves out time the OS gave other processes)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)  # subprocess mode
    return p


def _in_checkout(root: Path, argv: Sequence[str]) -> dict[str, list[dict[str, object]]]:
    env = dict(os.environ, PYTHONPATH=str(root.resolve()))
    cmd = [sys.executable, "-c", "import runpy, sys; sys.argv = sys.argv[1:]; "
           "runpy.run_path(sys.argv[0], run_name='__main__')", str(Path(__file__).resolve()), *argv, "--raw"]
    res = subprocess.run(cmd, env=env, cwd=str(root), capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = build_parser().parse_args(argv)
    if a.raw:
        if a.no_gc:
            gc.disable()
        print(json.dumps(run_all(a)))
        return 0
    trees = {"current": Path(__file__).resolve().parents[2]}
    if a.reference is not None:
        trees["reference"] = a.reference
    base = [x for x in argv if x != "--json"]
    if "--reference" in base:
        i = base.index("--reference")
        del base[i:i + 2]
    one = [*base, "--repeats", "1"]
    if "--refresh-step-work" in one:
        i = one.index("--refresh-step-work")
        plain = one[:i] + one[i + 2:]  # the reference checkout may not know the option
    else:
        plain = one
    runs: dict[str, dict[str, list[dict[str, object]]]] = {t: {} for t in trees}
    for r in range(a.repeats):  # alternate the checkouts, so both see the same machine load
        for tree, root in trees.items():
            got = _in_checkout(root, [*(one if tree == "current" else plain), "--seed", str(a.seed + r)])
            for name, rs in got.items():
                runs[tree].setdefault(name, []).extend(rs)
    table = {tree: {name: summarize(rs) for name, rs in by.items()} for tree, by in runs.items()}
    if a.json:
        print(json.dumps(table, indent=2))
        return 0
    cols = ("burst_ms", "p50_ms", "p99_ms", "max_ms", "refreshes", "refresh_p50_ms", "refresh_max_ms",
            "worst_ms", "add_us")
    print(f"{'tree':<10}{'scheduler':<11}" + "".join(f"{c:>15}" for c in cols) + "  digest")
    for tree, by in table.items():
        for name, s in by.items():
            vals = "".join(f"{float(s[c]):>15.3f}" if c != "refreshes" else f"{float(s[c]):>15.0f}"  # type: ignore[arg-type]
                           for c in cols)
            print(f"{tree:<10}{name:<11}{vals}  {s['digest']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
