"""Host pressure's plan (chameleon/tools/bench/co_tenant_host.py) against the real headroom rule
(chameleon/core/headroom.py): at warm nothing moves, the co-tenant leaves the planned shortfall, and once
it exits free memory clears the growth threshold by the slack, so the budget comes back; the co-tenant
stays within a third of the free memory or is refused."""

from __future__ import annotations

import pytest

from chameleon.core.headroom import HeadroomPolicy, HeadroomReport, HeadroomTarget
from chameleon.tools.bench.co_tenant_host import (
    MIN_SLACK,
    SAFETY,
    HostRoomError,
    check_room,
    grow_threshold,
    plan_target,
)

GIB, MIB = 1 << 30, 1 << 20
PAGE, SEG, POOL = 32 << 10, 2048, 48 * 1024  # 32 KiB pages, 64 MiB segments, a 1.5 GiB pool


def _budget(policy: HeadroomPolicy, free: int, allocated: int) -> int:
    report = HeadroomReport(rank=0, free_device_bytes=free, pool_pages_total=POOL, pool_pages_used=10,
                            page_bytes=PAGE, total_device_bytes=24 * GIB, pool_pages_allocated=allocated,
                            segment_pages=SEG)
    return policy.budget([report], allocated)


@pytest.mark.parametrize("free_gib", [4.6, 6, 10, 20, 64])
def test_the_plan_shrinks_then_grows_back_under_the_real_rule(free_gib: float) -> None:
    free, short = int(free_gib * GIB), GIB
    plan = plan_target(free, short, available=free)
    assert plan.co_tenant_bytes >= GIB and SAFETY * plan.co_tenant_bytes <= free
    policy = HeadroomPolicy(HeadroomTarget(plan.target, 0.0), POOL)
    assert _budget(policy, free, POOL) == POOL  # warm: inside the dead band or above it, pool full
    shrunk = _budget(policy, free - plan.co_tenant_bytes, POOL)
    given = (POOL - shrunk) * PAGE
    assert short <= given < short + SEG * PAGE  # the shortfall, in whole segments
    after_exit = free - plan.co_tenant_bytes + given + plan.co_tenant_bytes
    assert after_exit - grow_threshold(plan.target, SEG * PAGE) >= MIN_SLACK - MIB
    assert _budget(policy, after_exit, shrunk) == POOL  # the budget comes back


def test_a_small_host_is_refused_with_a_clear_message() -> None:
    with pytest.raises(HostRoomError, match="3 x the co-tenant"):
        plan_target(3 * GIB, GIB, available=3 * GIB)
    with pytest.raises(HostRoomError, match="MemAvailable is 2048 MiB"):
        check_room(GIB, 10 * GIB, available=2 * GIB)
    check_room(GIB, 3 * GIB, available=3 * GIB)
