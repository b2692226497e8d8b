"""The serving loop acts on headroom: fake shards whose replies carry measured free memory (a machine
of fixed size shared by the pool and a co-tenant). When the co-tenant takes memory the loop evicts
idle adapters and sends ResizePool until the target is free again; when it leaves, the pool grows
back. Requests never fail. (The loop would ignore every report without `memory.on_headroom`: this
test then fails.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from chameleon_pb import chameleon_pb2, generate_pb2

from chameleon.core.adapters import AdapterSpec
from chameleon.core.headroom import HeadroomTarget
from chameleon.core.request import Request
from router.engine.live import Live
from router.engine.loop import ServingLoop
from router.engine.policies import Policies
from router.engine.residency import ShardAdapters
from router.engine.shard_client import ShardError, StepResult
from router.engine.types import FinalEvent, GenerateParams, GenerateRequest

PAGE, PAGES, SEG = 1000, 64, 8
TOTAL = 200 * PAGE


class MachineShards:
    """One rank on a machine of TOTAL bytes: the pool's allocated pages and a co-tenant use it."""

    rpc_s = 0.0

    def __init__(self) -> None:
        self.allocated, self.co_tenant = PAGES, 0
        self.resident: dict[str, list[int]] = {}
        self.kv: set[int] = set()
        self.resizes: list[int] = []

    def room(self) -> chameleon_pb2.Headroom:
        used = len({*self.kv, 0}) + sum(len(p) for p in self.resident.values())
        return chameleon_pb2.Headroom(
            rank=0, free_device_bytes=max(TOTAL - self.allocated * PAGE - self.co_tenant, 0),
            total_device_bytes=TOTAL, pool_pages_total=PAGES, pool_pages_used=used, page_bytes=PAGE,
            pool_pages_allocated=self.allocated, segment_pages=SEG)

    async def prefill(self, batch: generate_pb2.Batch, timeout_s: float | None = None) -> StepResult:
        gens = []
        for r in batch.requests:
            assert all(b < self.allocated for b in r.blocks), "a KV block in released memory"
            assert not r.adapter_id or r.adapter_id in self.resident
            gens.append(generate_pb2.Generation(
                request_id=r.id, tokens=generate_pb2.Tokens(ids=[7], texts=["x"], logprobs=[0.0]),
                generated_text=generate_pb2.GeneratedText(text="x", generated_tokens=1)))
        return StepResult(gens, None, [self.room()], 0, 0)

    async def load_adapter(self, adapter_id: str, pages: list[int]) -> list[object]:
        assert all(p < self.allocated for p in pages), "an adapter loaded into released memory"
        self.resident[adapter_id] = list(pages)
        return [chameleon_pb2.LoadAdapterResponse(headroom=self.room())]

    async def offload_adapter(self, adapter_id: str) -> list[object]:
        self.resident.pop(adapter_id, None)
        return [chameleon_pb2.OffloadAdapterResponse(headroom=self.room())]

    async def resize_pool(self, num_pages: int) -> list[object]:
        held = [p for ps in self.resident.values() for p in ps if p >= num_pages]
        if held:
            raise ShardError("ResizePool", 0, f"pages {held} hold adapters", code="INVALID_ARGUMENT")
        self.allocated = num_pages
        self.resizes.append(num_pages)
        return [chameleon_pb2.ResizePoolResponse(num_pages=num_pages, headroom=self.room())]

    async def headroom(self) -> list[chameleon_pb2.Headroom]:
        return [self.room()]

    async def clear_cache(self, batch_id: int | None = None) -> None:
        return None

    async def close(self) -> None:
        return None


def _spec(adapter_id: str) -> AdapterSpec:
    return AdapterSpec(adapter_id, 8, 4 * PAGE, 4)


async def _ask(loop: ServingLoop, rid: int, adapter: str | None) -> None:
    req = GenerateRequest(text="hi", input_ids=(1, 2), adapter_id=adapter,
                          params=GenerateParams(max_new_tokens=2))
    core = Request(id=rid, adapter_id=adapter, input_tokens=2, max_new_tokens=2, arrival=0.0)
    live = Live(core, req, 0, 0.0)
    loop.submit(live, 0.0)
    events = []
    while (ev := await asyncio.wait_for(live.stream.get(), 10.0)) is not None:
        events.append(ev)
        if isinstance(ev, FinalEvent):
            break
    assert isinstance(events[-1], FinalEvent)  # never an error


async def _until(cond: Callable[[], bool], what: str, loop: ServingLoop, rid: list[int]) -> None:
    for _ in range(200):
        if cond():
            return
        rid[0] += 1
        await _ask(loop, rid[0], None)  # steady load: every step carries headroom
    raise AssertionError(f"never happened: {what}; stats {loop.stats()['cache']}")


def test_loop_shrinks_the_cache_under_a_co_tenant_and_grows_it_back() -> None:
    async def run() -> None:
        shards = MachineShards()
        policies = Policies("fifo", "chameleon", block_size=16, spec=_spec, max_prefill_tokens=256)
        loop = ServingLoop(shards, policies, PAGES, ShardAdapters(shards),  # type: ignore[arg-type]
                           memory_headroom=HeadroomTarget(40 * PAGE, 0.0))
        task = asyncio.create_task(loop.run())
        rid = [0]
        try:
            for k in range(10):  # ten idle adapters, 40 pages of cache
                rid[0] += 1
                await _ask(loop, rid[0], f"a{k}")
            await _until(lambda: len(shards.resident) == 10, "warm cache", loop, rid)
            before = loop.stats()["cache"]
            assert before["budget_pages"] == PAGES and shards.allocated == PAGES
            shards.co_tenant = 130 * PAGE  # free drops from 136 to 6 pages: 34 short of the target
            await _until(lambda: shards.allocated <= PAGES - 34, "pool released", loop, rid)
            cache = loop.stats()["cache"]
            assert cache["budget_pages"] <= PAGES - 34 and cache["pages_given_back"] >= 34
            assert cache["resident_adapters"] < 10 and cache["shrink_events"] >= 1
            assert all(p < shards.allocated for ps in shards.resident.values() for p in ps)
            loop.check_integrity()
            shards.co_tenant = 0
            await _until(lambda: shards.allocated == PAGES, "pool regrown", loop, rid)
            for k in range(10):  # the cache fills again
                rid[0] += 1
                await _ask(loop, rid[0], f"a{k}")
            after = loop.stats()["cache"]
            assert after["budget_pages"] == PAGES and after["resident_adapters"] == 10
            assert after["grow_events"] >= 1
            loop.check_integrity()
        finally:
            loop.stop()
            await task

    asyncio.run(run())


def test_without_a_target_the_pool_is_left_alone() -> None:
    async def run() -> None:
        shards = MachineShards()
        shards.co_tenant = 190 * PAGE
        policies = Policies("fifo", "chameleon", block_size=16, spec=_spec, max_prefill_tokens=256)
        loop = ServingLoop(shards, policies, PAGES, ShardAdapters(shards))  # type: ignore[arg-type]
        task = asyncio.create_task(loop.run())
        try:
            for k in range(5):
                await _ask(loop, k + 1, f"a{k}")
            assert shards.resizes == [] and loop.stats()["cache"]["budget_pages"] == PAGES
        finally:
            loop.stop()
            await task

    asyncio.run(run())
