"""Host pressure for the co-tenant scenario (co_tenant.py), where no memory cgroup can be created: the
shards measure the host's MemAvailable (or the limit of the cgroup they already run in, whichever is
tighter: shard/server/free_memory.py), so the router's headroom target is set just below the free
memory measured once the system is warm, and the co-tenant takes the room above the target plus the
shortfall. Nothing is confined: the co-tenant really competes with the whole host.

Why the room is about a fifth of the free memory and not a few hundred MiB: the headroom rule grows the
budget back only when free memory exceeds target + margin, the margin being a quarter of the target
(chameleon/core/headroom.py). After a shrink free memory sits at the target, so once the co-tenant exits
free memory is about target + its size: its size must exceed a quarter of the target. With free memory
F at warm, room R = F - target and co-tenant R + shortfall S, that is R + S > (F - R) / 4 + slack,
so R = (F / 4 + slack - S) / 1.25 (`plan_target`): about F / 5 + 1.4 GiB of co-tenant for S = 1 GiB
and the largest slack, 1.5 GiB (what the host's free memory may drop meanwhile without keeping the
budget from coming back). The co-tenant is refused (`HostRoomError`) unless MemAvailable and the
measured free memory are both at least 3 times its size, so it never pushes the host into swap or the
OOM killer; on a host with less than about 13 GiB free the slack is smaller, down to 512 MiB (the
co-tenant fits safely down to about 4.5 GiB free).

Drift: other processes of the host change free memory too. `held_bytes` (measured free + the shards'
and the co-tenant's resident memory) is what the rest of the host leaves; its change over a cycle is
the drift, and a drift upwards shrinks the shortfall the shards really had to cover.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from chameleon.core.headroom import HeadroomPolicy, HeadroomTarget
from chameleon.tools.bench.soak_watch import read_metrics

GIB, MIB = 1 << 30, 1 << 20
SAFETY = 3  # MemAvailable must be at least SAFETY x the co-tenant's bytes
FREE_METRIC = "chameleon_shard_free_device_bytes{"


class HostRoomError(RuntimeError):
    """The host has too little memory available to run the co-tenant safely."""


def meminfo_available(path: Path = Path("/proc/meminfo")) -> int:
    """The host's MemAvailable in bytes (0 when it cannot be read)."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def oom_kills(path: Path = Path("/proc/vmstat")) -> int:
    """The kernel's count of OOM kills since boot (0 when not reported)."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def free_min(metrics: dict[str, float]) -> float | None:
    """The lowest measured free memory any rank reported (None before the first report)."""
    free = [v for k, v in metrics.items() if k.startswith(FREE_METRIC)]
    return min(free) if free else None


def warm_free(metrics_url: str, samples: int = 5, every_s: float = 0.5, wait_s: float = 120.0) -> int:
    """The median of `samples` readings of the ranks' measured free memory (the lowest rank), once the
    router has a report (it polls GetHeadroom about once a second)."""
    got: list[float] = []
    deadline = time.monotonic() + wait_s
    while len(got) < samples:
        value = free_min(read_metrics(metrics_url, timeout_s=30))
        if value is not None:
            got.append(value)
        elif time.monotonic() > deadline:
            raise RuntimeError(f"no rank reported its free memory within {wait_s:.0f} s ({metrics_url})")
        time.sleep(every_s)
    return int(sorted(got)[len(got) // 2])


@dataclass(frozen=True, slots=True)
class HostPlan:
    """The headroom target for host pressure, from the free memory measured at warm."""

    free_at_warm: int
    target: int
    shortfall: int

    @property
    def room(self) -> int:
        return self.free_at_warm - self.target

    @property
    def co_tenant_bytes(self) -> int:
        return self.room + self.shortfall

    def describe(self) -> str:
        return (f"host pressure: free at warm {self.free_at_warm / MIB:.0f} MiB, headroom target "
                f"{self.target / MIB:.0f} MiB, co-tenant about {self.co_tenant_bytes / MIB:.0f} MiB "
                f"(shortfall {self.shortfall / MIB:.0f} MiB)")


MIN_SLACK, MAX_SLACK = 512 * MIB, 1536 * MIB


def plan_target(free_at_warm: int, shortfall: int, min_room: int = 256 * MIB,
                available: int | None = None) -> HostPlan:
    """Target = free at warm - room, the room chosen so that the co-tenant's exit clears the headroom
    rule's margin by a slack (module docstring): the largest in [MIN_SLACK, MAX_SLACK] that keeps the
    co-tenant within a third of the free memory (F/3 = R + S with 1.25 R = F/4 + slack - S gives slack
    = F/6 - S/4), less 512 MiB: free memory may rise by 600 MiB before the cycle (the co-tenant grows as
    much) and the co-tenant still fits. HostRoomError when even MIN_SLACK does not fit safely
    (`available`: MemAvailable, read when None)."""
    slack = min(max(free_at_warm // 6 - shortfall // 4 - 512 * MIB, MIN_SLACK), MAX_SLACK)
    room = max(int((free_at_warm / 4 + slack - shortfall) / 1.25), min_room)
    plan = HostPlan(free_at_warm, free_at_warm - room, shortfall)
    check_room(plan.co_tenant_bytes, free_at_warm, available)
    return plan


def check_room(nbytes: int, measured_free: float, available: int | None = None) -> None:
    """HostRoomError unless MemAvailable (read when None) and the shards' measured free memory are
    >= SAFETY x nbytes."""
    available = meminfo_available() if available is None else available
    have = min(available, int(measured_free))
    if have < SAFETY * nbytes:
        raise HostRoomError(
            f"host pressure needs {SAFETY} x the co-tenant's {nbytes / MIB:.0f} MiB available, but "
            f"MemAvailable is {available / MIB:.0f} MiB and the shards measure {measured_free / MIB:.0f} MiB "
            "free: too little memory on this host to run the co-tenant without risking swap or the OOM "
            "killer (the co-tenant must outgrow a quarter of the headroom target, which is set just below "
            "the free memory; see chameleon/tools/bench/co_tenant_host.py). Use a memory cgroup "
            "(--co-tenant-pressure cgroup, as root or with a delegated v2 controller) or a larger host")


def held_bytes(free: float, resident: float) -> float:
    """What the rest of the host leaves to the scenario: measured free + the resident memory of the
    shards and the co-tenant (constant while only they move memory)."""
    return free + resident


def grow_threshold(target: int, segment_bytes: int) -> int:
    """The free memory above which the router grows the pool back: target + the headroom rule's margin
    (chameleon/core/headroom.py)."""
    return target + HeadroomPolicy(HeadroomTarget(target, 0.0), 1).margin_bytes(target, segment_bytes)
