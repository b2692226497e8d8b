from __future__ import annotations

import random

import pytest

from chameleon.sim.paper_a40 import build
from chameleon.sim.profile import Profile
from chameleon.workload import TraceRecord


@pytest.fixture(scope="session")
def a40() -> Profile:
    return build()


def synthetic_records(n: int, seed: int = 0, max_in: int = 400, max_out: int = 60) -> list[TraceRecord]:
    """Heavy-tailed-ish lengths, arrival stamps 0.1 s apart."""
    rng = random.Random(seed)
    return [TraceRecord(0.1 * i, int(rng.paretovariate(1.5) * 40) % max_in + 1, rng.randint(1, max_out))
            for i in range(n)]
