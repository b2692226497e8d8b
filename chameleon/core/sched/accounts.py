"""Adapter memory in the MLQ quotas: charged once per (queue, adapter) in use, as memory holds it once.

The paper's quota charge is `need = In + Out + adapter_tokens` per request. Memory, however, holds a
resident adapter once however many running requests use it, so charging every request its adapter
counts a popular adapter n times: a queue of large-rank requests (rank 128 = 512 KV-token
equivalents on Llama-7B) fills its quota with copies of the same adapter while the pool still has
room, and that queue starves although memory is free (simulated 10k-token pool, 7 rps: the largest
queue's P99 TTFT 19.6 s vs FIFO's overall 5.3 s). With `MlqConfig.adapter_charge = "shared"` (the
default) the first running request of an adapter in a queue opens an account holding the adapter's
tokens; later requests of that adapter in that queue are charged In + Out only; the account is
returned when the last of them leaves. So a queue's charges equal its real memory occupancy (KV +
distinct adapters), the unit the quotas are sized in. "per_request" keeps the paper's literal rule.

Accounts live in the same `QuotaLedger` as request charges, under negative ids.
"""

from __future__ import annotations

from chameleon.core.sched.ledger import QuotaLedger

Parts = list[tuple[int, int]]


def split_parts(parts: Parts, amount: int) -> tuple[Parts, Parts]:
    """(the first `amount` tokens of `parts`, the rest), keeping each part's queue."""
    head: Parts = []
    tail: Parts = []
    for q, a in parts:
        take = max(0, min(a, amount))
        amount -= take
        if take:
            head.append((q, take))
        if a - take:
            tail.append((q, a - take))
    return head, tail


class AdapterAccounts:
    """Which (queue, adapter) accounts are open, and the running requests each one serves."""

    def __init__(self, shared: bool = True) -> None:
        self.shared = shared
        self._users: dict[tuple[int, str], set[int]] = {}
        self._ids: dict[tuple[int, str], int] = {}
        self._key_of: dict[int, tuple[int, str]] = {}
        self._next_id = -1

    def extra(self, q: int, adapter_id: str | None, adapter_tokens: int) -> int:
        """Adapter tokens an admission into queue q adds beyond In + Out."""
        if adapter_id is None or (self.shared and (q, adapter_id) in self._users):
            return 0
        return adapter_tokens

    def charge(self, ledger: QuotaLedger, req_id: int, q: int, adapter_id: str | None,
               adapter_tokens: int, parts: Parts) -> None:
        """Record an admission into queue q charged `parts`; opens the adapter's account if needed."""
        if not self.shared or adapter_id is None:
            ledger.charge(req_id, parts)
            return
        key = (q, adapter_id)
        if key not in self._users:
            acc, parts = split_parts(parts, adapter_tokens)
            self._open(ledger, key, acc)
        ledger.charge(req_id, parts)
        self._users[key].add(req_id)
        self._key_of[req_id] = key

    def _open(self, ledger: QuotaLedger, key: tuple[int, str], parts: Parts) -> None:
        acc_id = self._next_id
        self._next_id -= 1
        ledger.charge(acc_id, parts)
        self._ids[key] = acc_id
        self._users[key] = set()

    def release(self, ledger: QuotaLedger, req_id: int) -> None:
        """A request left (finish, cancel, squash): return its charge, and the account if it was the last."""
        ledger.release(req_id)
        key = self._key_of.pop(req_id, None)
        if key is None:
            return
        users = self._users[key]
        users.discard(req_id)
        if not users:
            del self._users[key]
            ledger.release(self._ids.pop(key))

    def relayout(self, ledger: QuotaLedger, quotas: list[int], queue_of: dict[int, int],
                 adapters: dict[int, tuple[str | None, int]]) -> None:
        """New queues: request charges move whole (ledger.relayout); accounts are rebuilt, one per
        (new queue, adapter) of the running requests. adapters: req_id -> (adapter_id, tokens)."""
        for acc_id in self._ids.values():
            ledger.release(acc_id)
        self._users, self._ids, self._key_of = users, _, key_of = {}, {}, {}
        ledger.relayout(quotas, queue_of)
        if not self.shared:
            return
        for rid, q in sorted(queue_of.items()):
            aid, tokens = adapters.get(rid, (None, 0))
            if aid is None:
                continue
            key = (q, aid)
            members = users.get(key)
            if members is None:
                self._open(ledger, key, [(q, tokens)] if tokens else [])
                members = users[key]
            members.add(rid)
            key_of[rid] = key

    def open_accounts(self) -> int:
        return len(self._users)
