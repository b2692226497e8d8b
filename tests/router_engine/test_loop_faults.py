"""The serving loop alone, on a fake shard client: a shard fault during an admitted request's Prefill
fails that request (it holds memory and a scheduler slot) instead of leaving it waiting forever."""

from __future__ import annotations

import asyncio

from chameleon.core.adapters import AdapterSpec
from chameleon.core.request import Request
from router.engine.live import Live
from router.engine.loop import ServingLoop
from router.engine.policies import Policies
from router.engine.residency import ShardAdapters
from router.engine.shard_client import ShardError
from router.engine.types import EngineError, GenerateParams, GenerateRequest


class DeadShards:
    """Every generation RPC fails as a dead rank does (UNAVAILABLE: a fault, not a refusal)."""

    rpc_s = 0.0

    def __init__(self) -> None:
        self.prefills = 0

    async def prefill(self, batch: object, timeout_s: float | None = None) -> object:
        self.prefills += 1
        raise ShardError("Prefill", 0, "failed to connect to all addresses", code="UNAVAILABLE")

    async def clear_cache(self, batch_id: int | None = None) -> None:
        raise ShardError("ClearCache", 0, "failed to connect to all addresses", code="UNAVAILABLE")

    async def close(self) -> None:
        return None


def _spec(adapter_id: str) -> AdapterSpec:
    raise KeyError(adapter_id)


def test_a_shard_fault_in_prefill_fails_the_admitted_request() -> None:
    async def run() -> tuple[BaseException | None, ServingLoop, DeadShards]:
        client = DeadShards()
        policies = Policies("fifo", "lru", block_size=16, spec=_spec, max_prefill_tokens=256)
        loop = ServingLoop(client, policies, 64, ShardAdapters(client))  # type: ignore[arg-type]
        task = asyncio.create_task(loop.run())
        req = GenerateRequest(text="hi", input_ids=(1, 2), params=GenerateParams(max_new_tokens=3))
        core = Request(id=1, adapter_id=None, input_tokens=2, max_new_tokens=3, arrival=0.0)
        live = Live(core, req, 0, 0.0)
        loop.submit(live, 0.0)
        err: BaseException | None = None
        try:
            await asyncio.wait_for(live.stream.get(), 10.0)
        except EngineError as exc:
            err = exc
        loop.stop()
        await task
        return err, loop, client

    err, loop, client = asyncio.run(run())
    assert client.prefills == 1
    assert isinstance(err, EngineError) and err.kind == "generation"
    assert loop.in_flight == 0 and not loop.healthy
    loop.check_integrity()
    assert loop.stats()["pool"]["by_tenant"]["kv"] == 0

