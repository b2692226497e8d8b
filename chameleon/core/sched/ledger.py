"""Per-queue token quotas with borrow/return accounting.

Admitting a request charges its `need` (tokens) to one or more queues: its own in phase 1, its own
plus donors' unused quota in phase 2 (borrowing). Completion, cancellation or a squash returns every
part of the charge. Invariants (checked by `check`): used[q] == sum of live charges to q, every charge
and every used[q] is >= 0, and no charge outlives its request.
"""

from __future__ import annotations

from collections.abc import Mapping


class QuotaLedger:
    def __init__(self, quotas: list[int]) -> None:
        self.quotas = list(quotas)
        self.used = [0] * len(quotas)
        self._charges: dict[int, list[tuple[int, int]]] = {}

    def __len__(self) -> int:
        return len(self.quotas)

    def available(self, q: int) -> int:
        return max(0, self.quotas[q] - self.used[q])

    def own_charge(self, q: int, need: int) -> int | None:
        """Phase-1 charge for a request of `need` tokens in queue q, or None if it must wait.

        A request larger than the queue's whole quota is admitted alone (when nothing of that queue is
        running) and charged the whole quota, so an undersized quota never starves it."""
        if need <= self.available(q):
            return need
        if self.used[q] == 0 and need > self.quotas[q]:
            return self.quotas[q]
        return None

    def charge(self, req_id: int, parts: list[tuple[int, int]]) -> None:
        if req_id in self._charges:
            raise RuntimeError(f"request {req_id} is already charged")
        for q, amount in parts:
            if amount < 0:
                raise RuntimeError(f"negative charge {amount} to queue {q}")
            self.used[q] += amount
        self._charges[req_id] = parts

    def release(self, req_id: int) -> None:
        for q, amount in self._charges.pop(req_id, []):
            self.used[q] -= amount

    def charged(self, req_id: int) -> int:
        return sum(a for _, a in self._charges.get(req_id, []))

    def relayout(self, quotas: list[int], queue_of: Mapping[int, int]) -> None:
        """New queues and quotas: every live charge moves, whole, to the request's new queue."""
        used = [0] * len(quotas)
        charges: dict[int, list[tuple[int, int]]] = {}
        for rid, parts in self._charges.items():
            q = queue_of[rid]
            total = parts[0][1] if len(parts) == 1 else sum(a for _, a in parts)
            used[q] += total
            charges[rid] = [(q, total)]
        self.quotas, self.used, self._charges = list(quotas), used, charges

    def check(self) -> None:
        used = [0] * len(self.quotas)
        for rid, parts in self._charges.items():
            for q, amount in parts:
                if amount < 0 or not 0 <= q < len(used):
                    raise RuntimeError(f"request {rid}: bad charge {amount} to queue {q}")
                used[q] += amount
        if used != self.used or min(self.used, default=0) < 0:
            raise RuntimeError(f"quota ledger disagrees: used {self.used}, charges sum {used}")
