"""Fault test (issue 19): a REAL co-tenant process takes >= 1 GiB next to a shard under steady load.

The shard runs in a memory cgroup of its own (chameleon/tools/bench/cgroup.py) whose limit, once the
shard is warm, is its working set + the headroom target + 32 MiB: the shard measures the cgroup's
free memory just above the target. The co-tenant joins the cgroup and takes 1 GiB (every page
touched), which leaves the target about 1 GiB short but stays within the limit (the target is
1 GiB + 256 MiB: nothing is ever OOM-killed). The router must shrink the cache budget and the shard
must release pool segments: its RSS drops by at least min(N, idle adapter bytes) and by 90% of the
shortfall; no request fails; no process dies; allocator and metrics agree; once the co-tenant exits,
the budget and the hit rate come back. Timings are measured and printed (release_s), not asserted;
every wait is bounded generously (see chameleon/tools/bench/co_tenant.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

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
from tests.procs import START_S, Child, RouterProc, free_port, shard_argv, workdir

pytestmark = pytest.mark.slow

N = GIB
TARGET = N + 256 * MIB
BUDGET = 1536 * MIB  # the shard's pool: about 1.4 GiB, mostly free pages and a few idle adapters


def test_co_tenant_takes_memory_and_the_shard_gives_it_back(tiny_assets: Path) -> None:
    cg = MemoryCgroup.create(unique_name("chameleon-test-co-tenant"))
    assert cg is not None, "this test needs a writable memory cgroup (v1 memory hierarchy or delegated v2)"
    wd = workdir()
    model, adapters = tiny_assets / "model", tiny_assets / "adapters"
    shard = router = None
    try:
        argv = shard_argv(model, wd / "s", adapter_dir=adapters, budget=BUDGET)
        shard = Child(cg.join_argv(argv), wd / "shard.log", name="shard")
        shard.wait_socket(f"{wd}/s-0", START_S)
        (wd / "router").mkdir()
        router = RouterProc(f"{wd}/s-0", model, adapters, wd / "router", free_port(), free_port(),
                            "--memory-headroom", str(TARGET))
        router.wait_healthy(START_S)
        names = sorted(p.name for p in adapters.iterdir() if p.is_dir())
        target = Target(int(router.http.rsplit(":", 1)[1]), [shard.pid], router.proc.pid, TARGET, cg,
                        [*names[:4], None])
        opts = CoTenantOptions(nbytes=N, hold_s=5.0, window_s=5.0)
        prepare_cgroup(target, opts)
        report = Scenario(target, opts).run()
        print(format_report(report))
        (cycle,) = report["cycles"]
        assert cycle["release_s"] is not None, format_report(report)
        assert cycle["dropped_bytes"] >= min(cycle["co_tenant_bytes"], cycle["idle_adapter_bytes"])
        assert cycle["dropped_bytes"] >= 0.9 * cycle["shortfall_bytes"] > 0.5 * N
        assert report["verdict"]["pass"], format_report(report)
        shard.check_alive("shard")
        router.check_alive("router")
    finally:
        for child in (router, shard):
            if child is not None:
                child.stop()
        cg.remove()
