"""`chameleon soak --co-tenant`: the co-tenant scenario (chameleon/tools/bench/co_tenant.py) for
minutes: launch the system, put it under a steady load, and let a real co-tenant take memory and give
it back, cycle after cycle; report the memory of every process over time, the pool's resizes and the
losses (zero to pass). On CPU the pressure (`--co-tenant-pressure`) comes from a memory cgroup of its
own where one can be created, else from the host: the system is launched once to measure the free
memory at warm, then again with the headroom target planned from it (co_tenant_host.py).
`--device cuda` runs the CUDA variant (the co-tenant takes device memory; shards on the GPU), for the
GPU check:
    chameleon demo-assets --tiny /tmp/tiny
    chameleon soak --co-tenant --device cuda --model-id /tmp/tiny/model --adapter-dir /tmp/tiny/adapters
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
from collections.abc import Callable

from chameleon.tools.bench.cgroup import unique_name
from chameleon.tools.bench.co_tenant import (
    GIB,
    MIB,
    PRESSURES,
    CoTenantOptions,
    Scenario,
    Target,
    choose_pressure,
    format_report,
    prepare_cgroup,
)
from chameleon.tools.bench.co_tenant_host import HostRoomError, plan_target, warm_free
from chameleon.tools.bench.loadgen import server_info
from chameleon.tools.bench.soak_watch import MemoryWatch
from chameleon.tools.bench.system import System, SystemSpec, start
from chameleon.tools.cliargs import EnvArgumentParser


def add_flags(p: EnvArgumentParser) -> None:
    p.add_argument("--co-tenant", action="store_true",
                   help="run the co-tenant scenario instead of the trace replay (no --trace needed): a "
                        "process takes memory next to the shards and gives it back, cycle after cycle")
    p.add_argument("--co-tenant-bytes", type=int, default=GIB,
                   help="co-tenant: the shortfall it creates below the headroom target, bytes (>= 1 GiB; "
                        "with host pressure it also takes the room above the target)")
    p.add_argument("--device", default="cpu",
                   help="co-tenant: 'cpu' (host memory; see --co-tenant-pressure) or a CUDA device ('cuda', "
                        "'cuda:0': device memory, shards on the GPU)")
    p.add_argument("--co-tenant-pressure", choices=PRESSURES, default="auto",
                   help="co-tenant on CPU: 'cgroup' (the system and the co-tenant share a memory cgroup of "
                        "their own; needs a writable v1 memory hierarchy or a delegated v2 controller), "
                        "'host' (no cgroup: the target is set just below the host free memory measured at "
                        "warm and the co-tenant takes a few GiB of host memory, at most a third of "
                        "MemAvailable), 'auto' (cgroup where one can be created, else host)")
    p.add_argument("--hold", type=float, default=20.0, help="co-tenant: seconds it holds memory per cycle")
    p.add_argument("--co-tenant-headroom", type=int, default=None,
                   help="co-tenant: the router's --memory-headroom in bytes (default: co-tenant bytes + "
                        "256 MiB with a cgroup, planned from the free memory at warm on the host, 2 GiB on "
                        "CUDA)")


def _cycles(args: argparse.Namespace, window_s: float) -> int:
    return max(1, int(args.minutes * 60 // (args.hold + 2 * window_s + 10)))


def _extra(args: argparse.Namespace, cpu: bool) -> tuple[str, ...]:
    extra = tuple(shlex.split(args.launch_args))
    if cpu and "--memory-budget" not in extra:
        # weights + activations of the demo model (about 2 GiB at its derived prefill budget) + a pool of
        # about 2 GiB for the co-tenant to compete with; a larger model takes --launch-args
        extra += ("--memory-budget", str(4 * GIB))
    if not cpu and "--shard-args" not in extra:
        # a CUDA resize re-allocates the pool, copying the kept pages through host memory (see
        # shard/model/pool.py): a quarter of the device keeps that copy to seconds
        extra += ("--shard-args", "--memory-fraction 0.25")
    return extra


def _host_headroom(args: argparse.Namespace, extra: tuple[str, ...]) -> int:
    """Host pressure: launch once with a harmless 1 MiB target, read the free memory the shards measure
    once warm, stop, and plan the target from it (co_tenant_host.plan_target)."""
    probe = _launch(args, (*extra, "--memory-headroom", str(MIB)))
    try:
        plan = plan_target(warm_free(probe.metrics_url), args.co_tenant_bytes)
    finally:
        probe.stop()
    print(plan.describe(), flush=True)
    return plan.target


def run(args: argparse.Namespace) -> int:
    cpu = args.device == "cpu"
    extra = _extra(args, cpu)
    try:
        cg = choose_pressure(args.co_tenant_pressure, unique_name()) if cpu else None
    except ValueError as exc:
        print(f"chameleon soak --co-tenant: {exc}", flush=True)
        return 2
    try:
        headroom = args.co_tenant_headroom or (
            2 * GIB if not cpu else args.co_tenant_bytes + 256 * MIB if cg else _host_headroom(args, extra))
    except HostRoomError as exc:
        print(f"chameleon soak --co-tenant: {exc}", flush=True)
        return 2
    except NotStarted as exc:
        return _not_started(exc)
    extra += ("--memory-headroom", str(headroom))
    window_s = 6.0
    opts = CoTenantOptions(nbytes=args.co_tenant_bytes, device="cpu" if cpu else _cuda(args.device),
                           hold_s=args.hold, cycles=_cycles(args, window_s), window_s=window_s,
                           sample_s=min(args.sample_every, 1.0))
    system = None
    try:
        system = _launch(args, extra, cg.join_argv if cg is not None else None)
        watch = MemoryWatch(system.proc.pid)
        info = asyncio.run(server_info(system.target))
        names: list[str | None] = [a for a, _, _ in info.adapters][:args.adapters or 8]
        routers = watch.pids("router")
        target = Target(system.http_port, watch.pids("shard"), routers[0] if routers else None, headroom,
                        cg, [*names, None])
        prepare_cgroup(target, opts)
        report = Scenario(target, opts).run()
    except HostRoomError as exc:  # a cycle found the host too short of memory to run the co-tenant
        print(f"chameleon soak --co-tenant: {exc}", flush=True)
        return 2
    except NotStarted as exc:
        return _not_started(exc)
    finally:
        if system is not None:
            system.stop()
        if cg is not None:
            cg.remove(wait_s=30.0)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0 if report["verdict"]["pass"] else 1


class NotStarted(RuntimeError):
    """The system under test did not start (e.g. the model does not fit the budget)."""


def _launch(args: argparse.Namespace, extra: tuple[str, ...],
            wrap: Callable[[list[str]], list[str]] | None = None) -> System:
    """`start` with its failure to start told apart from errors later in the scenario."""
    try:
        return start(SystemSpec(args.model_id, args.adapter_dir, extra), "chameleon", "chameleon", args.log,
                     wrap=wrap)
    except RuntimeError as exc:
        raise NotStarted(str(exc)) from exc


def _not_started(exc: NotStarted) -> int:
    print(f"chameleon soak --co-tenant: {exc}\n(pass launch flags with --launch-args, e.g. "
          "--launch-args '--memory-budget 8589934592')", flush=True)
    return 2


def _cuda(device: str) -> str:
    return "cuda:0" if device == "cuda" else device
