"""A shard killed mid-batch: in-flight requests fail with a clear error, memory is released, the
engine reports unhealthy, and new requests fail cleanly instead of hanging."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tokenizers import Tokenizer

from router.engine.entry import Engine
from router.engine.types import EngineError, GenerateParams, GenerateRequest, TokenEvent
from tests.router_engine.shards import ShardProc, engine_config


def test_shard_killed_mid_batch_fails_in_flight_requests(tiny_assets: Path) -> None:
    shard = ShardProc(tiny_assets / "model", tiny_assets / "adapters").wait_ready()
    tok = Tokenizer.from_file(str(tiny_assets / "model" / "tokenizer.json"))
    try:
        asyncio.run(_scenario(shard, tiny_assets, tok))
    finally:
        shard.stop()


async def _scenario(shard: ShardProc, tiny_assets: Path, tok: Tokenizer) -> None:
    engine = Engine(engine_config(shard, tiny_assets, tiny_assets / "adapters"))
    await engine.start()
    params = GenerateParams(max_new_tokens=1500, ignore_eos_token=True)
    reqs = [GenerateRequest(text=f"long story {i}", input_ids=tuple(tok.encode(f"long story {i}").ids),
                            adapter_id=("r8-00" if i % 2 else None), params=params) for i in range(4)]
    streams = [engine.generate(r) for r in reqs]
    for s in streams:
        assert isinstance(await s.__anext__(), TokenEvent)  # type: ignore[attr-defined]
    shard.kill()
    errors = await asyncio.gather(*(_error_of(s) for s in streams))
    for err in errors:
        assert isinstance(err, EngineError), err
        assert err.kind == "generation"
        assert "shard rank 0 failed" in err.message
    assert engine.loop is not None
    engine.loop.memory.check_integrity()
    assert engine.loop.memory.pool.used_by_tenant()["kv"] == 0
    assert not engine.loop.lives
    assert await engine.health() is False
    late = engine.generate(GenerateRequest(text="after", input_ids=tuple(tok.encode("after").ids)))
    assert isinstance(await _error_of(late), EngineError)
    await engine.stop(drain=False)


async def _error_of(stream: object) -> BaseException | None:
    try:
        async for _ in stream:  # type: ignore[attr-defined]
            pass
    except EngineError as exc:
        return exc
    return None
