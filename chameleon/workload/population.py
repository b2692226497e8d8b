"""Adapter population and popularity, as in the paper's evaluation.

`n` adapters split evenly over rank classes (100 adapters over ranks 8..128 = 20 per rank). A request
picks its rank class uniformly, then an adapter within the class with power-law popularity: the k-th
adapter of a class (k = 1, 2, ...) is chosen with probability proportional to k ** -exponent
(exponent 1.0 = Zipf; 0 = uniform). The paper says "power-law" without the exponent; 1.0 is our
default and a flag.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

PAPER_RANKS: tuple[int, ...] = (8, 16, 32, 64, 128)


@dataclass(frozen=True, slots=True)
class AdapterInfo:
    adapter_id: str
    rank: int


def make_population(n: int = 100, ranks: Sequence[int] = PAPER_RANKS) -> list[AdapterInfo]:
    """`n` adapters, classes as even as possible (earlier ranks get the remainder).

    Ids are `lora-r{rank}-{k}` with k = 1 the most popular adapter of its class.
    """
    if n < 1:
        raise ValueError(f"need at least one adapter, got {n}")
    if not ranks or any(r < 1 for r in ranks):
        raise ValueError(f"ranks must be positive integers, got {list(ranks)}")
    base, extra = divmod(n, len(ranks))
    out: list[AdapterInfo] = []
    for i, rank in enumerate(ranks):
        count = base + (1 if i < extra else 0)
        out += [AdapterInfo(f"lora-r{rank}-{k:03d}", rank) for k in range(1, count + 1)]
    return out


class AdapterSampler:
    """Draws adapter ids: uniform over rank classes, power law within a class. Deterministic given rng."""

    def __init__(self, population: Sequence[AdapterInfo], exponent: float = 1.0) -> None:
        if exponent < 0:
            raise ValueError(f"power-law exponent must be >= 0, got {exponent}")
        classes: dict[int, list[str]] = {}
        for a in population:
            classes.setdefault(a.rank, []).append(a.adapter_id)
        if not classes:
            raise ValueError("empty adapter population")
        self._classes = [classes[r] for r in sorted(classes)]
        self._cums = [list(accumulate(k ** -exponent for k in range(1, len(ids) + 1)))
                      for ids in self._classes]

    def draw(self, rng: random.Random) -> str:
        c = rng.randrange(len(self._classes))
        cum = self._cums[c]
        k = bisect.bisect_left(cum, rng.random() * cum[-1])
        return self._classes[c][min(k, len(cum) - 1)]
