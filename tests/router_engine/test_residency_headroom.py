"""The adapter mirror keeps the headroom of LoadAdapter/OffloadAdapter replies for the loop (it used to
drop it), the last report per rank."""

from __future__ import annotations

import asyncio

from chameleon_pb import chameleon_pb2

from router.engine.residency import ShardAdapters
from router.engine.residency_v3 import SelfLoadingShards


class TwoRanks:
    def __init__(self) -> None:
        self.calls = 0

    def _rooms(self, cls: type) -> list[object]:
        self.calls += 1
        return [cls(headroom=chameleon_pb2.Headroom(rank=r, free_device_bytes=100 * self.calls + r))
                for r in (0, 1)]

    async def load_adapter(self, adapter_id: str, pages: list[int]) -> list[object]:
        return self._rooms(chameleon_pb2.LoadAdapterResponse)

    async def offload_adapter(self, adapter_id: str) -> list[object]:
        return self._rooms(chameleon_pb2.OffloadAdapterResponse)


def test_load_and_offload_replies_feed_headroom() -> None:
    async def run() -> None:
        res = ShardAdapters(TwoRanks())  # type: ignore[arg-type]
        await res.ensure("a", [1, 2], 10)
        await res.offload(["a"])
        rooms = sorted(res.take_headroom(), key=lambda h: h.rank)
        assert [(h.rank, h.free_device_bytes) for h in rooms] == [(0, 200), (1, 201)]  # the latest
        assert res.take_headroom() == []
        assert SelfLoadingShards(TwoRanks()).take_headroom() == []  # type: ignore[arg-type]

    asyncio.run(run())
