"""`chameleon soak --co-tenant`: the co-tenant scenario (chameleon/tools/bench/co_tenant.py) for
minutes: launch the system (on CPU inside a memory cgroup of its own), put it under a steady load,
and let a real co-tenant take memory and give it back, cycle after cycle; report the memory of every
process over time, the pool's resizes and the losses (zero to pass). `--device cuda` runs the CUDA
variant (the co-tenant takes device memory; shards on the GPU), for the GPU check:
    chameleon demo-assets --tiny /tmp/tiny
    chameleon soak --co-tenant --device cuda --model-id /tmp/tiny/model --adapter-dir /tmp/tiny/adapters
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex

from chameleon.tools.bench.cgroup import MemoryCgroup, unique_name
from chameleon.tools.bench.co_tenant import (
    GIB,
    MIB,
    CoTenantOptions,
    Scenario,
    Target,
    format_report,
    prepare_cgroup,
)
from chameleon.tools.bench.loadgen import server_info
from chameleon.tools.bench.soak_watch import MemoryWatch
from chameleon.tools.bench.system import SystemSpec, start
from chameleon.tools.cliargs import EnvArgumentParser


def add_flags(p: EnvArgumentParser) -> None:
    p.add_argument("--co-tenant", action="store_true",
                   help="run the co-tenant scenario instead of the trace replay (no --trace needed): a "
                        "process takes memory next to the shards and gives it back, cycle after cycle")
    p.add_argument("--co-tenant-bytes", type=int, default=GIB,
                   help="co-tenant: the shortfall it creates below the headroom target, bytes (>= 1 GiB)")
    p.add_argument("--device", default="cpu",
                   help="co-tenant: 'cpu' (host memory, in a memory cgroup) or a CUDA device ('cuda', "
                        "'cuda:0': device memory, shards on the GPU)")
    p.add_argument("--hold", type=float, default=20.0, help="co-tenant: seconds it holds memory per cycle")
    p.add_argument("--co-tenant-headroom", type=int, default=None,
                   help="co-tenant: the router's --memory-headroom in bytes (default: co-tenant bytes + "
                        "256 MiB on CPU, 2 GiB on CUDA)")


def _cycles(args: argparse.Namespace, window_s: float) -> int:
    return max(1, int(args.minutes * 60 // (args.hold + 2 * window_s + 10)))


def run(args: argparse.Namespace) -> int:
    cpu = args.device == "cpu"
    headroom = args.co_tenant_headroom or (args.co_tenant_bytes + 256 * MIB if cpu else 2 * GIB)
    extra = tuple(shlex.split(args.launch_args))
    if cpu and "--memory-budget" not in extra:
        extra += ("--memory-budget", str(2 * GIB))  # the pool the co-tenant competes with
    if not cpu and "--shard-args" not in extra:
        # a CUDA resize re-allocates the pool, copying the kept pages through host memory (see
        # shard/model/pool.py): a quarter of the device keeps that copy to seconds
        extra += ("--shard-args", "--memory-fraction 0.25")
    extra += ("--memory-headroom", str(headroom))
    cg = MemoryCgroup.create(unique_name()) if cpu else None
    if cpu and cg is None:
        print("chameleon soak --co-tenant: no writable memory cgroup here (v1 memory hierarchy or "
              "delegated v2 needed) for the CPU scenario", flush=True)
        return 2
    window_s = 6.0
    opts = CoTenantOptions(nbytes=args.co_tenant_bytes, device="cpu" if cpu else _cuda(args.device),
                           hold_s=args.hold, cycles=_cycles(args, window_s), window_s=window_s,
                           sample_s=min(args.sample_every, 1.0))
    system = None
    try:
        system = start(SystemSpec(args.model_id, args.adapter_dir, extra), "chameleon", "chameleon", args.log,
                       wrap=cg.join_argv if cg is not None else None)
        watch = MemoryWatch(system.proc.pid)
        info = asyncio.run(server_info(system.target))
        names: list[str | None] = [a for a, _, _ in info.adapters][:args.adapters or 8]
        routers = watch.pids("router")
        target = Target(system.http_port, watch.pids("shard"), routers[0] if routers else None, headroom,
                        cg, [*names, None])
        prepare_cgroup(target, opts)
        report = Scenario(target, opts).run()
    finally:
        if system is not None:
            system.stop()
        if cg is not None:
            cg.remove(wait_s=30.0)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0 if report["verdict"]["pass"] else 1


def _cuda(device: str) -> str:
    return "cuda:0" if device == "cuda" else device
