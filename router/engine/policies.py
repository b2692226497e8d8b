"""Which scheduler and adapter-cache policy the serving loop runs, and how to build them afresh.

The loop builds its scheduler and memory manager from a `Policies` at start, and again after the shards
were restarted (a fresh pool and cache; a fresh scheduler when the pool size changed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from chameleon.core.adapters import AdapterSpec
from chameleon.core.allocator import PagePool
from chameleon.core.cache import make_cache
from chameleon.core.memory_manager import MemoryManager
from chameleon.core.sched import Scheduler, make_scheduler


@dataclass(frozen=True, slots=True)
class Policies:
    """`spec` gives an adapter's size facts (the engine's registry); `max_batch_size` None = the
    scheduler's default; `make` overrides the scheduler by name (experiments, tests); `mlq`: MlqConfig
    fields (name, value) for the chameleon scheduler (the router's --mlq-* flags)."""

    scheduler: str
    adapter_cache: str
    block_size: int
    spec: Callable[[str], AdapterSpec]
    max_prefill_tokens: int
    max_batch_size: int | None = None
    make: Callable[[], Scheduler] | None = None
    mlq: tuple[tuple[str, object], ...] = ()

    def new_scheduler(self) -> Scheduler:
        if self.make is not None:
            return self.make()
        limits = {"max_prefill_tokens": self.max_prefill_tokens}
        if self.max_batch_size is not None:
            limits["max_batch_size"] = self.max_batch_size
        mlq = dict(self.mlq) if self.scheduler in ("chameleon", "static4") else {}
        return make_scheduler(self.scheduler, **limits, **mlq)

    def new_memory(self, num_pages: int) -> MemoryManager:
        """A fresh pool of `num_pages` (page 0 reserved for the liveness check) and an empty cache."""
        return MemoryManager(PagePool(num_pages, reserved=(0,)), make_cache(self.adapter_cache),
                             self.block_size, self.spec)
