"""A router restarted against the running, warmed shard (its own module: no other router may hold the
shard meanwhile)."""

from __future__ import annotations

import pytest

from tests.reliability.system import Shard, adapter_request, metric, router_on

pytestmark = pytest.mark.slow


def test_router_restart_rewarms_the_running_shard(shard: Shard):
    """Routers in turn against one warmed shard: each Warmup frees the previous pool before measuring,
    so every restart gets a pool again (it used to fail: 'not enough memory for a KV cache'). On CPU
    the first pool is the largest: later measurements see the memory the allocator kept from earlier
    forward passes as used (RSS); from then on the pool stays put."""
    pages = []
    for name in ("restart-1", "restart-2", "restart-3"):
        with router_on(shard, name) as router:
            pages.append(metric(router, "chameleon_pool_pages_total"))
            assert adapter_request(router, "a01").status_code == 200
    assert pages[1] >= pages[0] / 2 and pages[2] >= 0.9 * pages[1], pages
