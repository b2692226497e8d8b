"""MLQ quotas charge an adapter once per queue while requests use it (memory holds it once)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from chameleon.core.predictor import OraclePredictor
from chameleon.core.sched import ChameleonScheduler, MlqConfig, ScheduleContext
from chameleon.core.sched.accounts import split_parts
from tests.policy.helpers import memory, req

BASE = MlqConfig(need="predicted", first_refresh_requests=None, t_refresh_s=1e9, bypass=False)


def one_queue(quota: int, charge: str) -> ChameleonScheduler:
    s = ChameleonScheduler(replace(BASE, adapter_charge=charge), predictor=OraclePredictor())
    s.set_layout([], [quota])
    return s


def admit_three(charge: str) -> tuple[ChameleonScheduler, list[int]]:
    """Three requests of the same rank-128 adapter (16 pages = 16 tokens at block size 1), In+Out=20."""
    s, mem = one_queue(100, charge), memory(10_000)
    for i in (1, 2, 3):
        s.add(req(i, adapter="r128-0", inp=10, out=10), 0.0)
    plan = s.schedule(0.0, ScheduleContext(mem))
    assert mem.adapter_tokens("r128-0") == 16
    return s, [r.id for r in plan.admit]


def test_per_request_charge_counts_a_shared_adapter_every_time():
    s, admitted = admit_three("per_request")
    assert admitted == [1, 2] and s.ledger.used == [72]   # 36 + 36; the third (36) exceeds 100


def test_shared_charge_counts_it_once_and_returns_it_with_the_last_user():
    s, admitted = admit_three("shared")
    assert admitted == [1, 2, 3] and s.ledger.used == [36 + 20 + 20]
    s.finish(1, 1.0, 10)   # the account outlives its opener while others still use the adapter
    assert s.ledger.used == [16 + 20 + 20] and s.accounts.open_accounts() == 1
    s.finish(2, 1.0, 10)
    s.cancel(3, 1.0)
    assert s.ledger.used == [0] and s.accounts.open_accounts() == 0
    s.ledger.check()


def test_relayout_rebuilds_one_account_per_queue_and_adapter():
    s, _ = admit_three("shared")
    s.add(req(4, adapter="r8-0", inp=10, out=10), 0.0)
    s.schedule(0.0, ScheduleContext(memory(10_000)))
    used = sum(s.ledger.used)
    s.set_layout([], [500])      # same single queue: charges move, accounts rebuilt
    assert sum(s.ledger.used) == used == 36 + 20 + 20 + (20 + 1)
    assert s.accounts.open_accounts() == 2
    s.ledger.check()


def test_split_parts_keeps_queues():
    assert split_parts([(0, 5), (1, 10)], 7) == ([(0, 5), (1, 2)], [(1, 8)])
    assert split_parts([(0, 5)], 0) == ([], [(0, 5)])


def test_unknown_adapter_charge_rejected():
    with pytest.raises(ValueError, match="adapter_charge"):
        MlqConfig(adapter_charge="twice")
