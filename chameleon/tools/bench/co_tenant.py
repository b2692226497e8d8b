"""The co-tenant scenario (issue 19): while a steady load runs, a real co-tenant process takes memory
next to the shards; the headroom loop must give memory back (the shards' resident memory drops),
fail no request and kill no process, and when the co-tenant exits the cache budget and hit rate come
back. Used by `chameleon soak --co-tenant` (minutes, several cycles) and tests/reliability.

Making the shards feel the co-tenant, three kinds of pressure (`Target.pressure`):
- "cgroup" (CPU, where a memory cgroup can be created): the system runs in a memory cgroup of its own
  (cgroup.py) and, once warm, the cgroup's limit is set to its working set + the headroom target +
  `slack`: the shards measure limit - usage, so free memory sits just above the target, and a
  co-tenant in the same cgroup taking N bytes leaves the target N - slack bytes short (the limit is
  never reached: the co-tenant fits in target + slack). Nothing else on the host disturbs it.
- "host" (CPU, no cgroup needed): the shards measure the host's MemAvailable; the target was set just
  below the free memory measured at warm (co_tenant_host.py, which says why the room is about a fifth
  of it) and the co-tenant takes (free - target) + N bytes of host memory, refused unless the host has
  3 times that available. Other processes move the host's free memory too: the drift is measured
  (co_tenant_host.held_bytes) and a drift upwards lowers the shortfall the shards must cover.
- "device" (CUDA, `device="cuda:0"`): the device is the shared resource: the co-tenant takes
  (free - target) + N bytes of device memory.
`choose_pressure` picks cgroup or host ("auto": the cgroup where one can be created).

Timings are measured and reported (release_s: from the co-tenant's start to the shards' memory having
dropped by what is required; also relative to the moment the co-tenant held all its bytes, negative
when the shards had given the memory back before it finished taking it), never asserted: waits are
bounded generously.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from chameleon.tools.bench.cgroup import MemoryCgroup
from chameleon.tools.bench.co_tenant_host import (
    check_room,
    grow_threshold,
    held_bytes,
    meminfo_available,
    oom_kills,
)
from chameleon.tools.bench.co_tenant_load import Sampler, SteadyLoad
from chameleon.tools.bench.soak_watch import integrity, read_metrics, rss_bytes

GIB, MIB = 1 << 30, 1 << 20
PRESSURES = ("auto", "cgroup", "host")
POOL_END = (("budget_pages", "chameleon_cache_budget_pages"),
            ("allocated_pages", "chameleon_pool_allocated_pages"),
            ("resizes", "chameleon_pool_resizes_total"),
            ("given_back", "chameleon_pool_pages_given_back_total"))


@dataclass(frozen=True, slots=True)
class CoTenantOptions:
    nbytes: int = GIB              # the shortfall the co-tenant creates (its size with a cgroup, about)
    device: str = "cpu"            # or a CUDA device: the co-tenant takes device memory
    cycles: int = 1
    hold_s: float = 10.0           # the co-tenant holds its memory this long under load
    window_s: float = 6.0          # hit-rate windows, before and after
    slack: int = 128 * MIB         # CPU: free above the target before the co-tenant (>= 1 segment)
    wait_s: float = 180.0          # bound on every wait (a busy machine is slow; not a timing)
    clients: int = 2
    max_new_tokens: int = 8
    sample_s: float = 0.5


@dataclass(slots=True)
class Target:
    """The running system: its router port, the shard processes, the router's pid, the cgroup (None on
    CPU: host pressure)."""

    http_port: int
    shard_pids: list[int]
    router_pid: int | None
    headroom_bytes: int
    cgroup: MemoryCgroup | None = None
    adapters: list[str] = field(default_factory=list)
    python: str = sys.executable

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/metrics"

    def pressure(self, device: str) -> str:
        """"device" (CUDA), "cgroup" or "host" (module docstring)."""
        return "device" if device != "cpu" else ("cgroup" if self.cgroup is not None else "host")


def choose_pressure(choice: str, name: str) -> MemoryCgroup | None:
    """The memory cgroup the CPU scenario runs in: a new one for "cgroup" (ValueError where none can be
    created), None for "host", and for "auto" a new one where possible, else None (host pressure)."""
    if choice not in PRESSURES:
        raise ValueError(f"pressure must be one of {', '.join(PRESSURES)}, got {choice!r}")
    if choice == "host":
        return None
    cg = MemoryCgroup.create(name)
    if cg is None and choice == "cgroup":
        raise ValueError("no writable memory cgroup here (cgroup v1 memory hierarchy, or v2 with the "
                         "memory controller delegated, is needed for cgroup pressure; 'host' needs none)")
    return cg


def _metric_sum(m: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in m.items() if k.startswith(prefix))


def _free_min(m: dict[str, float]) -> float:
    free = [v for k, v in m.items() if k.startswith("chameleon_shard_free_device_bytes{")]
    return min(free) if free else float("nan")


def _hit_rate(m0: dict[str, float], m1: dict[str, float]) -> float | None:
    hits = m1.get("chameleon_cache_hits_total", 0) - m0.get("chameleon_cache_hits_total", 0)
    misses = m1.get("chameleon_cache_misses_total", 0) - m0.get("chameleon_cache_misses_total", 0)
    return hits / (hits + misses) if hits + misses else None


class CoTenant:
    """`python -m shard.co_tenant BYTES` (in the cgroup when there is one); `ready_at` is the monotonic
    time at which it said it held its memory (None before), `wait_ready` waits for it."""

    def __init__(self, target: Target, nbytes: int, device: str) -> None:
        argv = [target.python, "-m", "shard.co_tenant", str(nbytes), "--device", device]
        if target.cgroup is not None and device == "cpu":
            argv = target.cgroup.join_argv(argv)
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.line = ""
        self.ready_at: float | None = None
        self._reader = threading.Thread(target=self._read, daemon=True, name="co-tenant-out")
        self._reader.start()

    def _read(self) -> None:
        while not self.line.startswith("ready"):
            line = self.proc.stdout.readline()
            if not line:
                return
            self.line = line
        self.ready_at = time.monotonic()

    def rss(self) -> int:
        return rss_bytes(self.proc.pid) or 0

    def wait_ready(self, timeout_s: float) -> float:
        self._reader.join(timeout_s)
        if self.ready_at is None:
            self.proc.kill()
            raise RuntimeError(f"the co-tenant did not take its memory: {self.line!r}")
        return self.ready_at

    def release(self, timeout_s: float) -> int:
        """Let it exit (stdin closes); its exit status (0 = it was not killed)."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class Scenario:
    def __init__(self, target: Target, opts: CoTenantOptions) -> None:
        self.t, self.o = target, opts
        self.cuda = opts.device != "cpu"
        self.pressure = target.pressure(opts.device)
        self.host = self.pressure == "host"
        self.co_pid: int | None = None

    def metrics(self) -> dict[str, float]:
        return read_metrics(self.t.metrics_url, timeout_s=30)

    def shard_memory(self, m: dict[str, float] | None = None) -> float:
        """CPU: the shards' RSS; CUDA: the pool bytes the shards hold on the device."""
        if self.cuda:
            m = m if m is not None else self.metrics()
            return _metric_sum(m, "chameleon_shard_pool_allocated_bytes{")
        return float(sum(rss_bytes(p) or 0 for p in self.t.shard_pids))

    def wait_for(self, cond: Callable[[], bool], step_s: float = 0.05) -> float | None:
        """Seconds until `cond()` held; None when it did not within `wait_s`."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.o.wait_s:
            if cond():
                return time.monotonic() - t0
            time.sleep(step_s)
        return None

    def pids(self) -> dict[str, int]:
        out = {f"shard{k}": p for k, p in enumerate(self.t.shard_pids)}
        if self.t.router_pid is not None:
            out["router"] = self.t.router_pid
        if self.co_pid is not None:
            out["co_tenant"] = self.co_pid
        return out

    def cycle(self, baseline_rate: float | None, full: tuple[float, float]) -> dict[str, object]:
        m = self.metrics()
        free_before, page = _free_min(m), m.get("chameleon_pool_page_bytes", 0.0)
        idle_bytes = m.get("chameleon_cache_idle_pages", 0.0) * page
        room = max(int(free_before) - self.t.headroom_bytes, 0)
        nbytes = self.o.nbytes + (room if self.cuda or self.host else 0)
        short = max(nbytes - room, 0)
        if self.host:
            check_room(nbytes, free_before)
        before = self.shard_memory(m)
        held0 = held_bytes(free_before, before)
        lowest, drift = [before], [0.0]

        def required() -> float:
            """What the shards must give back: a drift upwards (host) lowers the shortfall."""
            return max(min(nbytes, idle_bytes), 0.9 * max(short - max(drift[-1], 0.0), 0.0))
        spawned = time.monotonic()
        co = CoTenant(self.t, nbytes, self.o.device)
        self.co_pid = co.proc.pid

        def dropped() -> bool:
            if self.host and co.ready_at is not None:  # the co-tenant holds still: drift is measurable
                drift.append(self.drift(held0, co))
            lowest.append(self.shard_memory())
            return before - lowest[-1] >= required()
        release_s = self.wait_for(dropped)  # from the co-tenant's start: it may still be taking memory
        ready = co.wait_ready(self.o.wait_s)
        after_ready = None if release_s is None else round(spawned + release_s - ready, 2)
        time.sleep(self.o.hold_s)
        if self.host:
            drift.append(self.drift(held0, co))
        lowest.append(self.shard_memory())
        at_hold = self.metrics()
        regrow_margin = None
        if self.host:  # free memory once the co-tenant is gone (pool still shrunk) - the growth threshold
            seg = max((v for k, v in at_hold.items() if k.startswith("chameleon_shard_segment_pages{")),
                      default=0.0) * page
            regrow_margin = held0 + drift[-1] - lowest[-1] - grow_threshold(self.t.headroom_bytes, int(seg))
        rc = co.release(self.o.wait_s)
        self.co_pid = None
        exited = time.monotonic()
        regrow_s = self.wait_for(lambda: self._full(full), step_s=0.25)
        m0 = self.metrics()
        time.sleep(self.o.window_s)
        rate_after = _hit_rate(m0, self.metrics())
        return {"co_tenant_bytes": nbytes, "free_before": free_before, "idle_adapter_bytes": idle_bytes,
                "shortfall_bytes": short, "host_drift_bytes": drift[-1] if self.host else None,
                "effective_shortfall_bytes": max(short - max(drift[-1], 0.0), 0.0),
                "required_drop_bytes": required(), "shard_memory_before": before,
                "shard_memory_lowest": min(lowest), "dropped_bytes": before - min(lowest),
                "release_s": release_s, "release_after_co_tenant_ready_s": after_ready,
                "co_tenant_take_s": round(ready - spawned, 2), "ready_to_exit_s": round(exited - ready, 2),
                "budget_pages_under_pressure": at_hold.get("chameleon_cache_budget_pages"),
                "free_under_pressure": _free_min(at_hold), "co_tenant_exit": rc, "regrow_s": regrow_s,
                "hit_rate_before": baseline_rate, "hit_rate_after": rate_after,
                "regrow_margin_bytes": regrow_margin}

    def drift(self, held0: float, co: CoTenant) -> float:
        """How much more the rest of the host leaves now than at the cycle's start (host pressure)."""
        free = _free_min(self.metrics())
        return held_bytes(free, self.shard_memory() + co.rss()) - held0

    def _full(self, full: tuple[float, float]) -> bool:
        m = self.metrics()
        return (m.get("chameleon_cache_budget_pages", -1) >= full[0]
                and m.get("chameleon_pool_allocated_pages", -1) >= full[1])

    def run(self) -> dict[str, object]:
        load = SteadyLoad(self.t.http_port, self.t.adapters, self.o.clients, self.o.max_new_tokens)
        cg = self.t.cgroup
        gauges = {"cgroup_working_set": cg.working_set} if cg else {}
        if self.host:
            gauges["host_available"] = meminfo_available
        sampler = Sampler(self.t.metrics_url, self.pids, gauges, self.o.sample_s)
        kills0 = oom_kills()
        load.start()
        sampler.start()
        try:
            time.sleep(self.o.window_s)  # warm: the adapters become resident
            m0 = self.metrics()
            time.sleep(self.o.window_s)
            m1 = self.metrics()
            baseline = _hit_rate(m0, m1)
            full = (m1.get("chameleon_cache_budget_pages", 0.0),
                    m1.get("chameleon_pool_allocated_pages", 0.0))
            cycles = [self.cycle(baseline, full) for _ in range(self.o.cycles)]
        finally:
            counts = load.stop()
            rows = sampler.stop()
        self.wait_for(lambda: self.metrics().get("chameleon_requests_in_flight") == 0, step_s=0.5)
        end = self.metrics()
        return self.report(cycles, counts, rows, end, oom_kills() - kills0)

    def report(self, cycles: list[dict], counts, rows, end: dict[str, float],
               host_kills: int = 0) -> dict[str, object]:
        alive = {role: rss_bytes(pid) is not None for role, pid in self.pids().items()}
        shard_alloc = [v for k, v in end.items() if k.startswith("chameleon_shard_pool_pages_allocated{")]
        allocated = end.get("chameleon_pool_allocated_pages")
        pool_ok = bool(shard_alloc) and all(v == allocated for v in shard_alloc)
        if self.t.cgroup is not None:
            events = self.t.cgroup.events()
        else:  # the kernel's OOM kills anywhere on the host while the scenario ran
            events = {"host_oom_kills": host_kills, "oom_kills": host_kills if self.host else 0}
        report = {"device": self.o.device, "pressure": self.pressure,
                  "headroom_target_bytes": self.t.headroom_bytes,
                  "cgroup": str(self.t.cgroup.path) if self.t.cgroup else None, "cgroup_events": events,
                  "requests": {"sent": counts.sent, "ok": counts.ok, "failed": dict(counts.failed)},
                  "cycles": cycles, "processes_alive": alive, "integrity": integrity(end),
                  "pool_consistent": pool_ok, "timeline": rows,
                  "pool": {k: end.get(v) for k, v in POOL_END}}
        report["verdict"] = verdict(report)
        return report


def verdict(r: dict) -> dict[str, bool]:
    cycles = r["cycles"]
    checks = {
        "no_request_failed": r["requests"]["sent"] > 0 and not r["requests"]["failed"],
        "memory_given_back": all(c["release_s"] is not None
                                 and c["dropped_bytes"] >= c["required_drop_bytes"] for c in cycles),
        "budget_came_back": all(c["regrow_s"] is not None for c in cycles),
        "hit_rate_came_back": all(c["hit_rate_before"] is None or c["hit_rate_after"] is None
                                  or c["hit_rate_after"] >= c["hit_rate_before"] - 0.1 for c in cycles),
        "no_process_killed": all(r["processes_alive"].values())
        and all(c["co_tenant_exit"] == 0 for c in cycles) and r["cgroup_events"].get("oom_kills", 0) == 0,
        "allocator_and_metrics_consistent": bool(r["integrity"]["ok"]) and r["pool_consistent"],
    }
    return {**checks, "pass": all(checks.values())}


def format_report(r: dict) -> str:
    req = r["requests"]
    lines = [f"co-tenant scenario on {r['device']} ({r['pressure']} pressure): headroom target "
             f"{r['headroom_target_bytes'] / MIB:.0f} MiB, cgroup {r['cgroup'] or '(none)'} "
             f"{r['cgroup_events']}",
             f"requests: sent {req['sent']}  ok {req['ok']}  failed {req['failed']}"]
    for k, c in enumerate(r["cycles"]):
        rel = "never" if c["release_s"] is None else \
            f"{c['release_s']:.2f} s of the co-tenant's start (it took {c['co_tenant_take_s']:.2f} s to " \
            f"take its memory; {c['release_after_co_tenant_ready_s']:+.2f} s after it held it)"
        back = "never" if c["regrow_s"] is None else f"{c['regrow_s']:.2f} s"
        if c.get("regrow_margin_bytes") is not None:
            back += f" (free above the growth threshold by {c['regrow_margin_bytes'] / MIB:.0f} MiB, est.)"
        drift = "" if c["host_drift_bytes"] is None else \
            f", host drift {c['host_drift_bytes'] / MIB:+.0f} MiB: effective " \
            f"{c['effective_shortfall_bytes'] / MIB:.0f} MiB"
        lines.append(
            f"cycle {k}: co-tenant {c['co_tenant_bytes'] / MIB:.0f} MiB (shortfall "
            f"{c['shortfall_bytes'] / MIB:.0f} MiB{drift}, idle adapters "
            f"{c['idle_adapter_bytes'] / MIB:.1f} MiB); "
            "shard memory "
            f"{c['shard_memory_before'] / MIB:.0f} -> {c['shard_memory_lowest'] / MIB:.0f} MiB (dropped "
            f"{c['dropped_bytes'] / MIB:.0f}, required {c['required_drop_bytes'] / MIB:.0f}) in {rel}; "
            f"budget back {back} after the co-tenant exited (rc {c['co_tenant_exit']}); hit rate "
            f"{c['hit_rate_before']} -> {c['hit_rate_after']}")
    lines.append(f"pool at the end: {r['pool']}; consistent {r['pool_consistent']}; "
                 f"integrity {'OK' if r['integrity']['ok'] else r['integrity']}")
    lines.append(memory_table(r["timeline"]))
    checks = {k: v for k, v in r["verdict"].items() if k != "pass"}
    lines.append(f"verdict: {'PASS' if r['verdict']['pass'] else 'FAIL'} {checks}")
    return "\n".join(lines)


def memory_table(rows: list[dict[str, float]], every: int = 0) -> str:
    """Memory per process over time (MiB), one line per sample (every n-th when many)."""
    if not rows:
        return "(no samples)"
    keys = sorted({k for row in rows for k in row if k.startswith("rss_")})
    extra = [k for k in ("cgroup_working_set", "host_available", "free_min") if any(k in row for row in rows)]
    every = every or max(1, len(rows) // 40)
    head = "   t s " + "".join(f"{k[4:]:>11}" for k in keys) + "".join(f"{k[:11]:>12}" for k in extra) \
        + "  budget  alloc"
    out = ["memory over time (MiB; budget/alloc in pages)", head]
    for row in rows[::every]:
        cells = "".join(f"{row.get(k, 0) / MIB:11.0f}" for k in keys)
        cells += "".join(f"{row.get(k, 0) / MIB:12.0f}" for k in extra)
        pages = f"{row.get('budget_pages', 0):6.0f} {row.get('allocated_pages', 0):6.0f}"
        out.append(f"{row['t']:7.1f}{cells}  {pages}")
    return "\n".join(out)


def prepare_cgroup(target: Target, opts: CoTenantOptions) -> None:
    """CPU with a cgroup: limit = working set + target + slack, so free memory sits just above the
    target (see the module docstring). Host pressure and CUDA: nothing to do (the target was planned
    from the free memory measured at warm: co_tenant_host.plan_target)."""
    if opts.device != "cpu" or target.cgroup is None:
        return
    target.cgroup.set_limit(target.cgroup.working_set() + target.headroom_bytes + opts.slack)
    time.sleep(1.0)  # a report or two under the new limit
