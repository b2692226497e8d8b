"""What the adapter cache needs to know about one adapter."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    """An adapter's identity and footprint.

    `nbytes` is its true size (the largest rank slice under TP); `pages` is the number of pool pages
    it occupies on every rank (router: `chameleon.core.memory.adapter_pages`; simulator: its profile).
    """

    adapter_id: str
    rank: int
    nbytes: int
    pages: int

    def __post_init__(self) -> None:
        if self.pages < 0 or self.nbytes < 0 or self.rank < 0:
            raise ValueError(f"adapter {self.adapter_id!r}: rank, nbytes and pages must be >= 0")


def spec_table(specs: Iterable[AdapterSpec]) -> Callable[[str], AdapterSpec]:
    """A lookup function over known adapters that fails with a clear error on an unknown id."""
    table = {s.adapter_id: s for s in specs}

    def lookup(adapter_id: str) -> AdapterSpec:
        try:
            return table[adapter_id]
        except KeyError:
            raise KeyError(f"unknown adapter {adapter_id!r} ({len(table)} adapters registered)") from None

    return lookup
