"""The Engine against real shard processes (tiny model): correctness, concurrency, cancellation, admin.

Three shards start in parallel: one serves the Engine, one is driven directly as the reference, one is
killed mid-batch under a second Engine.
"""

from __future__ import annotations

import asyncio
import random
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from chameleon.core.request import Request
from chameleon.core.sched import FifoScheduler, Plan, ScheduleContext, SchedulerLimits
from router.engine.direct import direct_generate
from router.engine.entry import Engine
from router.engine.shard_client import ShardClient
from router.engine.startup import start_shards
from router.engine.types import EngineError, Event, FinalEvent, GenerateParams, GenerateRequest, TokenEvent
from tests.procs import ShardProc, make_adapter_dir
from tests.router_engine.shards import engine_config

pytestmark = pytest.mark.slow
PROMPTS = ["hello world", "the quick brown fox jumps", "a b c d e f g", "serving many adapters at once"]


@pytest.fixture(scope="module")
def aloop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def setup(tiny_assets: Path, tmp_path_factory: pytest.TempPathFactory,
          aloop: asyncio.AbstractEventLoop) -> Iterator[dict]:
    adir = tmp_path_factory.mktemp("adapters")
    names = make_adapter_dir(tiny_assets / "adapters", adir, 20)
    procs = [ShardProc(tiny_assets / "model", adir) for _ in range(3)]
    main, ref, victim = procs
    try:
        for p in procs:
            p.wait_ready()
        engine = Engine(engine_config(main, tiny_assets, adir))
        aloop.run_until_complete(engine.start())
        ref_client = aloop.run_until_complete(ShardClient.connect(ref.uds))
        ref_facts = aloop.run_until_complete(start_shards(ref_client, engine.config))
        tok = Tokenizer.from_file(str(tiny_assets / "model" / "tokenizer.json"))
        yield {"engine": engine, "names": names, "adir": adir, "tok": tok, "ref": ref_client,
               "ref_block": ref_facts.info.block_size, "ref_pages": ref_facts.info.num_pages,
               "src": tiny_assets / "adapters", "victim": victim, "tiny": tiny_assets}
        aloop.run_until_complete(engine.stop(drain=False))
        aloop.run_until_complete(ref_client.close())
    finally:
        for p in procs:
            p.stop()


def request(tok: Tokenizer, text: str, adapter: str | None, new: int = 8,
            **params: object) -> GenerateRequest:
    return GenerateRequest(text=text, input_ids=tuple(tok.encode(text).ids), adapter_id=adapter,
                           params=GenerateParams(max_new_tokens=new, **params))  # type: ignore[arg-type]


async def collect(engine: Engine, req: GenerateRequest) -> list:
    return [ev async for ev in engine.generate(req)]


async def drain(stream: AsyncIterator[Event]) -> list[Event]:
    return [ev async for ev in stream]


async def idle(engine: Engine) -> None:
    """Wait until the engine holds no request (cancellations are applied at the next step)."""
    assert engine.loop is not None
    for _ in range(2000):
        if engine.loop.idle:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"engine still holds {engine.loop.in_flight} requests")


def assert_clean(engine: Engine) -> None:
    assert engine.loop is not None
    engine.loop.check_integrity()
    assert engine.stats()["pool"]["by_tenant"]["kv"] == 0
    assert all(n == 0 for n in engine.loop.adapter_refcounts().values())
    assert engine.loop.idle


def test_tokens_equal_shard_alone(setup: dict, aloop: asyncio.AbstractEventLoop) -> None:
    engine, tok, ref = setup["engine"], setup["tok"], setup["ref"]
    block, top = setup["ref_block"], setup["ref_pages"]

    async def run() -> None:
        await ref.load_adapter("a01", list(range(top - engine.adapter_spec("a01").pages, top)))
        for i, (text, adapter) in enumerate([(PROMPTS[0], None), (PROMPTS[1], "a01"), (PROMPTS[2], None),
                                             (PROMPTS[3], "a01")]):
            req = request(tok, text, adapter, new=12, ignore_eos_token=True)
            events = await collect(engine, req)
            got = [e.id for e in events if isinstance(e, TokenEvent)]
            pages = list(range(1 + 4 * i, 5 + 4 * i))
            want = await direct_generate(ref, req, pages, block, rid=i + 1, batch_id=i + 1)
            assert got == want.token_ids
            final = events[-1]
            assert isinstance(final, FinalEvent) and final.generated_text == want.text
            assert final.generated_tokens == 12 and final.input_length == len(req.input_ids)

    aloop.run_until_complete(run())
    assert_clean(engine)


def test_adapter_changes_output(setup: dict, aloop: asyncio.AbstractEventLoop) -> None:
    engine, tok = setup["engine"], setup["tok"]

    async def run() -> list[list[int]]:
        outs = []
        for adapter in (None, "a03", "a07"):
            events = await collect(engine, request(tok, PROMPTS[1], adapter, new=6, ignore_eos_token=True))
            outs.append([e.id for e in events if isinstance(e, TokenEvent)])
        return outs

    base, a, b = aloop.run_until_complete(run())
    assert base != a or base != b


def test_64_concurrent_over_20_adapters(setup: dict, aloop: asyncio.AbstractEventLoop) -> None:
    engine, tok, names = setup["engine"], setup["tok"], setup["names"]
    rng = random.Random(1)
    reqs = [request(tok, PROMPTS[i % 4] + f" {i}", names[i % 20] if i % 5 else None, new=rng.randint(1, 10))
            for i in range(64)]

    async def run() -> list[list]:
        return await asyncio.gather(*(collect(engine, r) for r in reqs))

    results = aloop.run_until_complete(run())
    for req, events in zip(reqs, results, strict=True):
        final = events[-1]
        assert isinstance(final, FinalEvent)
        tokens = [e for e in events if isinstance(e, TokenEvent)]
        assert len(tokens) == final.generated_tokens <= req.params.max_new_tokens
    stats = engine.stats()
    assert stats["cache"]["hits"] + stats["cache"]["misses"] >= 51
    assert stats["adapters"]["bytes_loaded"] > 0
    assert_clean(engine)


def test_cancellation_storm(setup: dict, aloop: asyncio.AbstractEventLoop) -> None:
    engine, tok, names = setup["engine"], setup["tok"], setup["names"]
    rng = random.Random(7)

    async def consumer(i: int) -> str:
        req = request(tok, PROMPTS[i % 4], names[i % 20] if i % 3 else None, new=rng.randint(4, 30))
        stream = engine.generate(req)
        mode, stop_after = i % 4, rng.randint(0, 3)
        if mode == 0:
            del stream  # never iterated: dropped
            return "dropped"
        n = 0
        async for _ in stream:
            n += 1
            if mode == 1 and n > stop_after:
                await stream.aclose()  # type: ignore[attr-defined]
                return "closed"
        return "finished"

    async def run() -> None:
        tasks = [asyncio.create_task(consumer(i)) for i in range(48)]
        await asyncio.sleep(0)
        for i, t in enumerate(tasks):
            if i % 4 == 2:
                t.cancel()  # client disconnect while waiting for tokens
        await asyncio.gather(*tasks, return_exceptions=True)
        await idle(engine)

    aloop.run_until_complete(run())
    assert_clean(engine)
    events = aloop.run_until_complete(collect(engine, request(tok, PROMPTS[0], names[2])))
    assert isinstance(events[-1], FinalEvent)
    assert_clean(engine)


def test_overloaded_and_validation(setup: dict, aloop: asyncio.AbstractEventLoop) -> None:
    engine, tok = setup["engine"], setup["tok"]

    async def run() -> None:
        streams = [engine.generate(request(tok, PROMPTS[0], None)) for _ in range(128)]
        with pytest.raises(EngineError) as err:
            engine.generate(request(tok, PROMPTS[0], None))
        assert err.value.kind == "overloaded"
        for s in streams:
            await s.aclose()  # type: ignore[attr-defined]
        await idle(engine)
        with pytest.raises(EngineError) as err:
            engine.generate(request(tok, PROMPTS[0], "no-such-adapter"))
        assert err.value.kind == "validation" and "no-such-adapter" in err.value.message
        with pytest.raises(EngineError) as err:
            engine.generate(request(tok, PROMPTS[0], None, new=engine.info.max_total_tokens))
        assert err.value.kind == "validation"

    aloop.run_until_complete(run())
    assert_clean(engine)


def test_adapter_admin_and_discovery(setup: dict, aloop: asyncio.AbstractEventLoop) -> None:
    engine, tok, adir = setup["engine"], setup["tok"], setup["adir"]

    async def run() -> None:
        status = await engine.admin.load("a11")
        assert status.resident and status.refcount == 0 and status.pages > 0
        assert "a11" in engine.stats()["adapters"]["resident"]
        assert await engine.admin.unload("a11") is True
        assert await engine.admin.unload("a11") is False
        shutil.copytree(setup["src"] / "r8-01", adir / "late-arrival")
        assert engine.known("late-arrival")
        events = await collect(engine, request(tok, PROMPTS[2], "late-arrival"))
        assert isinstance(events[-1], FinalEvent)
        listed = {a.adapter_id: a for a in engine.admin.list()}
        assert listed["late-arrival"].resident and listed["late-arrival"].rank == 8
        assert await engine.health() is True

    aloop.run_until_complete(run())
    assert_clean(engine)


@pytest.mark.parametrize("scheduler", ["chameleon", "fifo", "sjf"])
@pytest.mark.parametrize("cache", ["chameleon", "lru", "fairshare", "none"])
def test_every_policy_combination_serves(setup: dict, aloop: asyncio.AbstractEventLoop,
                                         scheduler: str, cache: str) -> None:
    engine, tok, names = setup["engine"], setup["tok"], setup["names"]

    async def run() -> list[list]:
        await engine.switch_policies(scheduler, cache)
        reqs = [request(tok, PROMPTS[i % 4], names[i % 7] if i % 4 else None, new=3 + i % 5)
                for i in range(14)]
        streams = [engine.generate(r) for r in reqs]
        first = await streams[0].__anext__()  # type: ignore[attr-defined]
        await streams[0].aclose()  # type: ignore[attr-defined]
        assert isinstance(first, TokenEvent)
        return await asyncio.gather(*(drain(s) for s in streams[1:]))

    for events in aloop.run_until_complete(run()):
        assert isinstance(events[-1], FinalEvent)
    aloop.run_until_complete(idle(engine))
    stats = engine.stats()
    assert stats["scheduler"]["scheduler"] == scheduler
    assert stats["scheduler"]["running"] == 0
    assert_clean(engine)
    if cache == "none":
        assert stats["cache"]["resident_adapters"] == 0


class SquashOnce(FifoScheduler):
    """FIFO that squashes each running request once, after it has streamed two tokens (test only)."""

    def schedule(self, now: float, ctx: ScheduleContext) -> Plan:
        plan = super().schedule(now, ctx)
        for req in list(self._running.values()):
            if req.squashes == 0 and req.generated >= 2 and req not in plan.admit:
                self._squash(req, now, plan)
        return plan

    def _requeue(self, req: Request) -> None:
        pos = next((i for i, r in enumerate(self._queue) if r.seq > req.seq), len(self._queue))
        self._queue.insert(pos, req)


def test_squashed_requests_rerun_without_duplicate_tokens(setup: dict,
                                                          aloop: asyncio.AbstractEventLoop) -> None:
    engine, tok, names = setup["engine"], setup["tok"], setup["names"]
    reqs = [request(tok, PROMPTS[i], names[i] if i % 2 else None, new=7, ignore_eos_token=True)
            for i in range(4)]

    async def tokens(req: GenerateRequest) -> list[int]:
        return [e.id for e in await collect(engine, req) if isinstance(e, TokenEvent)]

    async def run() -> tuple[list[list[int]], list[list[int]], int]:
        await engine.switch_policies("fifo", "lru")
        plain = [await tokens(r) for r in reqs]
        squasher = SquashOnce(limits=SchedulerLimits(8, 1024))
        await engine.switch_policies("fifo", "lru", make_scheduler=lambda: squasher)
        squashed = await asyncio.gather(*(tokens(r) for r in reqs))
        return plain, squashed, squasher.squashed_total

    plain, squashed, total = aloop.run_until_complete(run())
    assert total == 4
    assert squashed == plain
    assert engine.stats()["loop"]["replay_divergences"] == 0
    assert_clean(engine)


def test_shard_killed_mid_batch_fails_in_flight_requests(setup: dict) -> None:
    """In-flight requests fail with a clear error, memory is released, the engine reports unhealthy
    and refuses new requests; once the shard is restarted the engine re-warms it and serves again."""
    asyncio.run(_killed_scenario(setup["victim"], setup["tiny"], setup["adir"], setup["tok"]))


async def _killed_scenario(shard: ShardProc, tiny_assets: Path, adir: Path, tok: Tokenizer) -> None:
    engine = Engine(engine_config(shard, tiny_assets, adir))
    await engine.start()
    params = GenerateParams(max_new_tokens=1500, ignore_eos_token=True)
    reqs = [GenerateRequest(text=f"long story {i}", input_ids=tuple(tok.encode(f"long story {i}").ids),
                            adapter_id=("a00" if i % 2 else None), params=params) for i in range(4)]
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
    engine.loop.check_integrity()
    assert engine.stats()["pool"]["by_tenant"]["kv"] == 0
    assert engine.loop.in_flight == 0
    assert await engine.health() is False
    with pytest.raises(EngineError) as refused:
        engine.generate(GenerateRequest(text="after", input_ids=tuple(tok.encode("after").ids)))
    assert refused.value.kind == "unavailable"
    shard.restart().wait_ready()  # the launcher restarts the group; the engine re-warms by itself
    for _ in range(600):
        if await engine.health():
            break
        await asyncio.sleep(0.1)
    assert await engine.health() is True
    again = replace(reqs[1], params=GenerateParams(max_new_tokens=5, ignore_eos_token=True))
    done = [ev async for ev in engine.generate(again)]
    assert isinstance(done[-1], FinalEvent) and done[-1].generated_tokens == 5
    engine.loop.check_integrity()
    await engine.stop(drain=True)


async def _error_of(stream: object) -> BaseException | None:
    try:
        async for _ in stream:  # type: ignore[attr-defined]
            pass
    except EngineError as exc:
        return exc
    return None


def test_a_request_the_shard_refuses_fails_alone_without_recovery(setup: dict,
                                                                  aloop: asyncio.AbstractEventLoop) -> None:
    """Requests that slip past the router's validation (sent straight to the engine here) are refused
    by the shard one by one: each fails with the shard's reason, the batch mates admitted in the same
    Prefill get exactly their solo tokens, and the loop never enters recovery."""
    engine, tok, names = setup["engine"], setup["tok"], setup["names"]
    assert engine.loop is not None
    faults = engine.stats()["loop"]["shard_faults"]
    good = [request(tok, PROMPTS[i], names[i] if i % 2 else None, new=6, ignore_eos_token=True)
            for i in range(3)]
    bad = [request(tok, PROMPTS[0], None, do_sample=True, temperature=float("nan")),
           request(tok, PROMPTS[1], names[5], top_p=float("inf"), do_sample=True),
           request(tok, PROMPTS[2], None, repetition_penalty=float("-inf"))]

    async def tokens(req: GenerateRequest) -> list[int] | str:
        try:
            return [e.id for e in await collect(engine, req) if isinstance(e, TokenEvent)]
        except EngineError as exc:
            return f"{exc.kind}: {exc.message}"

    async def run() -> tuple[list, list]:
        solo = [await tokens(r) for r in good]
        together = await asyncio.gather(*(tokens(r) for pair in zip(good, bad, strict=True) for r in pair))
        return solo, together

    solo, together = aloop.run_until_complete(run())
    assert together[0::2] == solo
    for refused, word in zip(together[1::2], ("temperature", "top_p", "repetition_penalty"), strict=True):
        assert isinstance(refused, str) and refused.startswith("validation: the shard refused")
        assert word in refused
    assert engine.stats()["loop"]["shard_faults"] == faults and engine.loop.healthy
    aloop.run_until_complete(idle(engine))
    assert_clean(engine)


def test_stop_drains_in_flight_requests(setup: dict, aloop: asyncio.AbstractEventLoop) -> None:
    """Runs last on the module's engine: stop(drain=True) lets every request finish, then refuses."""
    engine, tok, names = setup["engine"], setup["tok"], setup["names"]

    async def run() -> list[list[Event]]:
        streams = [engine.generate(request(tok, PROMPTS[i], names[i], new=6)) for i in range(3)]
        consumers = [asyncio.create_task(drain(s)) for s in streams]
        await asyncio.sleep(0)
        await engine.stop(drain=True)
        with pytest.raises(EngineError) as err:
            engine.generate(request(tok, PROMPTS[0], None))
        assert err.value.kind == "unavailable"
        return await asyncio.gather(*consumers)

    for events in aloop.run_until_complete(run()):
        assert isinstance(events[-1], FinalEvent)
