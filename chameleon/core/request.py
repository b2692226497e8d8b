"""The request as the policy core sees it, and the multiset of adapters the queue is waiting for."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(slots=True, eq=False)
class Request:
    """One generation request. Identity is `id` (unique per engine); objects compare by identity.

    Set by the caller: id, adapter_id (None = base model), input_tokens, max_new_tokens, arrival
    (seconds, same clock as every `now`), true_output_tokens (simulator/oracle only).
    Set by the scheduler: predicted_output, wrs, queue, need_tokens (quota charge in tokens),
    admitted_at (None while queued), squashes (times it was squashed and re-queued), seq (arrival
    order, used to re-queue a squashed request at its original position).
    Set by the engine: generated (tokens produced so far while running; reset on squash).
    """

    id: int
    adapter_id: str | None
    input_tokens: int
    max_new_tokens: int
    arrival: float
    true_output_tokens: int | None = None
    predicted_output: int = 0
    wrs: float = 0.0
    queue: int = 0
    need_tokens: int = 0
    admitted_at: float | None = None
    squashes: int = 0
    seq: int = -1
    generated: int = 0

    @property
    def total_tokens(self) -> int:
        """Tokens the KV cache must hold at most: the prompt plus every token it may generate."""
        return self.input_tokens + self.max_new_tokens


class AdapterDemand:
    """Multiset of adapter ids wanted by queued requests; `in` is true while any queued request needs it.

    Schedulers keep one up to date incrementally (O(1) per change) and pass it to
    `MemoryManager.try_admit` as `queued_adapters`, so no per-iteration set is rebuilt.
    """

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def add(self, adapter_id: str | None) -> None:
        if adapter_id is not None:
            self._counts[adapter_id] = self._counts.get(adapter_id, 0) + 1

    def remove(self, adapter_id: str | None) -> None:
        if adapter_id is None:
            return
        left = self._counts.get(adapter_id, 0) - 1
        if left < 0:
            raise RuntimeError(f"adapter demand for {adapter_id!r} would go negative")
        if left == 0:
            del self._counts[adapter_id]
        else:
            self._counts[adapter_id] = left

    def __contains__(self, adapter_id: object) -> bool:
        return adapter_id in self._counts

    def __iter__(self) -> Iterator[str]:
        return iter(self._counts)

    def __len__(self) -> int:
        return len(self._counts)

    def count(self, adapter_id: str) -> int:
        return self._counts.get(adapter_id, 0)
