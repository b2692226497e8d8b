"""PagePool: one pool, two tenants, integrity under random alloc/free/evict."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chameleon.core.allocator import PagePool


def test_alloc_lowest_ids_first_and_reserved_never_handed_out():
    pool = PagePool(6, reserved=(0,))
    assert pool.capacity == 5
    assert pool.alloc_kv(1, 2) == [1, 2]
    assert pool.alloc_adapter("a", 2) == [3, 4]
    assert pool.used_by_tenant() == {"kv": 2, "adapter": 2}
    assert pool.alloc_kv(2, 2) is None  # only one page left: nothing changes
    assert pool.free_pages() == 1
    assert pool.free_kv(1) == 2
    assert pool.alloc_kv(2, 3) == [1, 2, 5]
    pool.check_integrity()


def test_double_allocation_to_one_owner_is_refused():
    pool = PagePool(4)
    pool.alloc_kv(1, 1)
    with pytest.raises(ValueError):
        pool.alloc_kv(1, 1)
    pool.alloc_adapter("a", 1)
    with pytest.raises(ValueError):
        pool.alloc_adapter("a", 1)


def test_bad_construction_is_a_clear_error():
    with pytest.raises(ValueError, match="at least one page"):
        PagePool(0)
    with pytest.raises(ValueError, match="outside the pool"):
        PagePool(4, reserved=(7,))


def test_integrity_detects_double_ownership_leak_and_bad_counts():
    pool = PagePool(5)
    pool.alloc_kv(1, 2)
    pool._adapters["x"] = [pool._kv[1][0]]  # corrupt: one page owned twice
    with pytest.raises(RuntimeError, match="owned twice"):
        pool.check_integrity()
    pool = PagePool(5)
    pool.alloc_kv(1, 2)
    pool._kv[1].pop()  # corrupt: a page vanishes
    with pytest.raises(RuntimeError):
        pool.check_integrity()
    pool = PagePool(5)
    pool.alloc_kv(1, 2)
    pool._kv_used = 5
    with pytest.raises(RuntimeError, match="counts disagree"):
        pool.check_integrity()


ops = st.lists(st.tuples(st.sampled_from(["kv", "ad", "free_kv", "free_ad"]), st.integers(0, 7),
                         st.integers(0, 9)), max_size=60)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_integrity_under_random_alloc_free_evict(seq):
    pool = PagePool(24, reserved=(0, 5))
    kv: dict[int, int] = {}
    ad: dict[str, int] = {}
    for op, owner, n in seq:
        free_before = pool.free_pages()
        if op == "kv" and owner not in kv:
            got = pool.alloc_kv(owner, n)
            assert (got is None) == (n > free_before)
            if got is not None:
                kv[owner] = n
        elif op == "ad" and f"a{owner}" not in ad:
            got = pool.alloc_adapter(f"a{owner}", n)
            assert (got is None) == (n > free_before)
            if got is not None:
                ad[f"a{owner}"] = n
        elif op == "free_kv":
            assert pool.free_kv(owner) == kv.pop(owner, 0)
        elif op == "free_ad":
            assert pool.free_adapter(f"a{owner}") == ad.pop(f"a{owner}", 0)
        pool.check_integrity()
        assert pool.used_by_tenant() == {"kv": sum(kv.values()), "adapter": sum(ad.values())}
        assert pool.free_pages() == pool.capacity - sum(kv.values()) - sum(ad.values())
