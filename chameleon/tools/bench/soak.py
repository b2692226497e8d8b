"""`chameleon soak`: launch a system, replay the trace at a moderate load for M minutes, SIGKILL the
shard group once midway (the launcher restarts it, the router reconnects), and report requests sent /
succeeded / failed by reason, each process's memory at start, settled and end, and the allocator's
integrity once the load is over. Exit 0 when the soak passes:
  - no admitted request (one that got its first stream message) is lost, except those in flight when
    the shard died (sent before the router reported unhealthy); overload (requests refused, or
    cancelled by the soak at its drain limit) is reported apart and is not loss;
  - the shards came back (the router was healthy again before the end);
  - every process ends within --memory-tolerance (10%) of its settled memory;
  - the allocator is intact: no KV page or refcount held, adapter pages = resident adapters (router
    and shards).
With --co-tenant it runs the headroom scenario instead (chameleon/tools/bench/soak_co_tenant.py).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shlex
import signal
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from chameleon.tools.bench import soak_co_tenant
from chameleon.tools.bench.loadgen import CANCELLED, replay, server_info
from chameleon.tools.bench.soak_watch import MemoryWatch, integrity, read_metrics
from chameleon.tools.bench.stats import RequestRecord
from chameleon.tools.bench.system import System, SystemSpec, start
from chameleon.tools.bench.workload import BenchOptions, plan, population
from chameleon.tools.cliargs import EnvArgumentParser, prepare_outputs
from chameleon.workload import TraceError, read_trace

DRAIN_S = 120.0  # requests still running this long after the last arrival are cancelled (overload)


def build_parser() -> EnvArgumentParser:
    p = EnvArgumentParser(prog="chameleon soak", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="length of the load")
    p.add_argument("--trace", default=None,
                   help="trace CSV/JSONL (e.g. ../shared/data/traces/azure_llm_2023_conv.csv)")
    p.add_argument("--model-id", type=Path, default=None, help="model folder (default: the demo model)")
    p.add_argument("--adapter-dir", type=Path, default=None,
                   help="adapter folder (default: the demo set)")
    p.add_argument("--launch-args", default="", help="more `chameleon launch` flags, one shell-quoted string")
    p.add_argument("--rate", type=float, default=2.0, help="requests/s (Poisson), a moderate load")
    p.add_argument("--adapters", type=int, default=0, help="adapters to use (0 = all served, up to 100)")
    p.add_argument("--length-scale", type=float, default=1 / 16, help="trace lengths x this")
    p.add_argument("--max-output", type=int, default=64, help="cap on output tokens")
    p.add_argument("--kill-at", type=float, default=0.5,
                   help="SIGKILL the shards at this fraction of the run")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between memory samples")
    p.add_argument("--memory-tolerance", type=float, default=0.10, help="allowed growth over settled memory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log", type=Path, default=Path("soak-launch.log"), help="the launched system's log")
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    soak_co_tenant.add_flags(p)
    return p


@dataclass(slots=True)
class Timeline:
    """Seconds since the load started."""

    kill_s: float | None = None
    killed_pids: list[int] = field(default_factory=list)
    unhealthy_s: float | None = None  # first /health != 200 after the kill
    healthy_again_s: float | None = None


def _health(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


async def _watch(system: System, mem: MemoryWatch, tl: Timeline, origin: float, kill_s: float,
                 every_s: float, stop: asyncio.Event) -> None:
    """Health twice a second, memory every `every_s`, and the shard kill at `kill_s`."""
    next_sample = 0.0
    while not stop.is_set():
        now = time.perf_counter() - origin
        if now >= next_sample:
            mem.sample(now)
            next_sample = now + every_s
        if tl.kill_s is None and now >= kill_s:
            tl.killed_pids = mem.pids("shard")
            for pid in tl.killed_pids:
                os.kill(pid, signal.SIGKILL)
            tl.kill_s = now
        elif tl.kill_s is not None and tl.healthy_again_s is None:
            ok = await asyncio.to_thread(_health, system.http_port)
            if not ok and tl.unhealthy_s is None:
                tl.unhealthy_s = time.perf_counter() - origin
            elif ok and tl.unhealthy_s is not None:
                tl.healthy_again_s = time.perf_counter() - origin
        await asyncio.sleep(0.5)


def outcomes(records: Sequence[RequestRecord], tl: Timeline) -> dict[str, object]:
    """Sent / succeeded / failed by reason, in three kinds that never overlap:
    - overload: `refused` (failed before any stream message: 429/RESOURCE_EXHAUSTED, or refused while
      the shards were down) and `cancelled_at_drain` (the soak itself cancelled them, still running at
      its drain limit: the load was above what the system serves in time). Not data loss.
    - loss: admitted (got a stream message), not cancelled by the soak, and not completed; split by
      whether it was in flight at the kill (sent before the router reported unhealthy)."""
    failed = Counter(r.error or "no token" for r in records if not r.ok)
    cancelled = [r for r in records if r.error == CANCELLED]
    lost = [r for r in records if r.prompt_tokens > 0 and not r.ok and r.error != CANCELLED]
    refused = [r for r in records if r.prompt_tokens == 0 and not r.ok and r.error != CANCELLED]
    cutoff = tl.unhealthy_s if tl.unhealthy_s is not None else tl.kill_s
    at_kill = [r for r in lost if tl.kill_s is not None and cutoff is not None and r.sent_s <= cutoff + 0.5]
    return {"sent": len(records), "succeeded": sum(r.ok for r in records), "failed": dict(failed),
            "admitted_lost": len(lost), "lost_in_flight_at_kill": len(at_kill),
            "lost_otherwise": len(lost) - len(at_kill), "refused": len(refused),
            "cancelled_at_drain": len(cancelled),
            "cancelled_at_drain_admitted": sum(1 for r in cancelled if r.prompt_tokens > 0)}


def _probe(port: int) -> bool:
    """One base-model request after the load: the system serves, and its step reports fresh headroom."""
    body = json.dumps({"inputs": "soak probe", "parameters": {"max_new_tokens": 2}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/generate", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status == 200
    except OSError:
        return False


def _info(port: int) -> dict:
    """The router's GET /info (its max_input_tokens caps the replayed prompts)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/info", timeout=30) as resp:
        return json.loads(resp.read())


async def _wait_idle(metrics_url: str, timeout_s: float = 60.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        m = await asyncio.to_thread(read_metrics, metrics_url)
        if m.get("chameleon_requests_in_flight") == 0 or time.monotonic() > deadline:
            return m
        await asyncio.sleep(0.5)


async def run_soak(system: System, args, records) -> dict[str, object]:
    info = await server_info(system.target)
    served = [(a, r) for a, r, _ in info.adapters]
    n = args.adapters or min(len(served), 100)
    duration = args.minutes * 60
    max_input = (await asyncio.to_thread(_info, system.http_port))["max_input_tokens"]
    opts = BenchOptions(rate=args.rate, duration_s=duration, length_scale=args.length_scale,
                        max_input=max_input, max_output=args.max_output, seed=args.seed)
    items = plan(records, population(served, n), opts, info.max_total_tokens, info.max_new_tokens)
    mem, tl, stop = MemoryWatch(system.proc.pid), Timeline(), asyncio.Event()
    origin = time.perf_counter() + 0.2  # replay()'s own origin
    watcher = asyncio.ensure_future(_watch(system, mem, tl, origin, args.kill_at * duration,
                                           args.sample_every, stop))
    recs = await replay(system.target, items, seed=args.seed, drain_timeout_s=DRAIN_S)
    recovery_deadline = time.monotonic() + 180.0  # the soak ends on a serving system
    while tl.healthy_again_s is None and not watcher.done() and time.monotonic() < recovery_deadline:
        await asyncio.sleep(0.5)
    await _wait_idle(system.metrics_url)
    served_at_end = await asyncio.to_thread(_probe, system.http_port)  # also refreshes the shards' headroom
    metrics = await _wait_idle(system.metrics_url)
    stop.set()
    await watcher
    mem.sample(time.perf_counter() - origin)
    procs = [p.summary(args.memory_tolerance) for p in mem.procs.values() if p.samples]
    report = {"minutes": args.minutes, "rate": args.rate, "adapters": n, "requests_planned": len(items),
              "timeline": {"kill_s": tl.kill_s, "killed_pids": tl.killed_pids, "unhealthy_s": tl.unhealthy_s,
                           "healthy_again_s": tl.healthy_again_s},
              "requests": outcomes(recs, tl), "memory": procs, "integrity": integrity(metrics),
              "served_at_end": served_at_end}
    report["verdict"] = verdict(report)
    return report


def verdict(report: dict) -> dict[str, bool]:
    """The pass/fail checks, `pass`, and `overloaded` (informational, not part of `pass`): requests
    were refused or cancelled at the drain limit, i.e. the rate was above what the system serves. An
    overloaded run is not a lossy one: only admitted requests that failed count as lost."""
    req, tl = report["requests"], report["timeline"]
    checks = {"no_admitted_request_lost_outside_the_kill": req["lost_otherwise"] == 0,
              "shards_killed_and_recovered": bool(tl["killed_pids"]) and tl["healthy_again_s"] is not None
              and report["served_at_end"],
              "memory_within_tolerance": all(p["ok"] for p in report["memory"]),
              "allocator_intact": bool(report["integrity"]["ok"])}
    overloaded = req["refused"] + req["cancelled_at_drain"] > 0
    return {**checks, "pass": all(checks.values()), "overloaded": overloaded}


def format_report(r: dict) -> str:
    req, tl = r["requests"], r["timeline"]
    mib = 1 << 20
    nan = float("nan")
    lines = [f"soak: {r['minutes']:g} min at {r['rate']:g} req/s over {r['adapters']} adapters; shards "
             f"killed at {tl['kill_s'] or nan:.0f} s (pids {tl['killed_pids']}), router unhealthy at "
             f"{tl['unhealthy_s'] or nan:.1f} s, healthy again at {tl['healthy_again_s'] or nan:.1f} s",
             f"requests: sent {req['sent']}  succeeded {req['succeeded']}  failed {dict(req['failed'])}",
             f"  overload (not loss): refused at submission {req['refused']}, cancelled at the "
             f"{DRAIN_S:.0f} s drain limit {req['cancelled_at_drain']} "
             f"({req['cancelled_at_drain_admitted']} of them admitted)",
             f"  loss: admitted but lost {req['admitted_lost']} "
             f"(in flight at the kill {req['lost_in_flight_at_kill']}, otherwise {req['lost_otherwise']})",
             "memory (RSS MiB)      pid     start  settled      end  growth  window"]
    for p in r["memory"]:
        lines.append(f"  {p['role']:<12} {p['pid']:>8} {p['start_bytes'] / mib:8.1f} "
                     f"{p['settled_bytes'] / mib:8.1f} {p['end_bytes'] / mib:8.1f} "
                     f"{p['growth_vs_settled'] * 100:6.1f}%  "
                     f"{p['from_s']:.0f}-{p['to_s']:.0f} s")
    integ = r["integrity"]
    lines.append(f"allocator integrity: {'OK' if integ['ok'] else 'FAILED'} {integ['checks']}")
    checks = {k: v for k, v in r["verdict"].items() if k not in ("pass", "overloaded")}
    overload = (f"; OVERLOADED: {req['refused']} refused, {req['cancelled_at_drain']} cancelled at the drain "
                "limit (the rate is above capacity; lower --rate)") if r["verdict"]["overloaded"] else ""
    lines.append(f"verdict: {'PASS' if r['verdict']['pass'] else 'FAIL'} {checks}{overload}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.co_tenant:
        prepare_outputs(files=(args.json, args.log))
        return soak_co_tenant.run(args)
    try:
        if not args.trace:
            raise ValueError("--trace is required (e.g. ../shared/data/traces/azure_llm_2023_conv.csv)")
        if not args.minutes > 0 or not 0 < args.kill_at < 1:
            raise ValueError("--minutes must be > 0 and --kill-at between 0 and 1")
        records = read_trace(args.trace)
        prepare_outputs(files=(args.json, args.log))
        extra = tuple(shlex.split(args.launch_args))
    except (ValueError, TraceError) as exc:
        print(f"chameleon soak: {exc}", file=sys.stderr)
        return 2
    system = start(SystemSpec(args.model_id, args.adapter_dir, extra), "chameleon", "chameleon", args.log)
    try:
        report = asyncio.run(run_soak(system, args, records))
    finally:
        system.stop()
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0 if report["verdict"]["pass"] else 1
