"""Faults and overload on a real router (tiny shard): a 10x burst over --max-concurrent-requests,
clients that stop reading their streams, adapter files corrupted or deleted between listing and loading,
admin unload counted as an eviction and a cancellation storm (allocator and
refcounts intact afterwards)."""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import Iterator

import aiohttp
import grpc
import pytest
import requests
from chameleon_pb import generation_pb2 as pb
from chameleon_pb import generation_pb2_grpc as pb_grpc

from chameleon.tools.bench.soak_watch import integrity, read_metrics
from tests.procs import RouterProc
from tests.reliability.system import BUSY_S, Shard, adapter_request, golden_ids, metric, router_on, rss_bytes
from tests.router_api.real import params, wait_for

pytestmark = pytest.mark.slow

MAX_CONCURRENT = 4
BURST = 10 * MAX_CONCURRENT
LONG = 400  # tokens per admitted request: the burst arrives long before the first one finishes


@pytest.fixture(scope="module")
def faults(shard: Shard) -> Iterator[tuple[RouterProc, list[int]]]:
    with router_on(shard, "faults", "--max-concurrent-requests", str(MAX_CONCURRENT)) as router:
        yield router, golden_ids(router)


def _idle(router: RouterProc) -> None:
    wait_for(lambda: metric(router, "chameleon_requests_in_flight") == 0, "no request in flight", BUSY_S)
    assert metric(router, 'chameleon_pool_pages{tenant="kv"}') == 0


async def _burst(router: RouterProc) -> list[tuple[str, int]]:
    """BURST requests at once, half gRPC streams, half HTTP; (outcome, tokens) in completion order."""
    done: list[tuple[str, int]] = []

    async def grpc_one(stub: pb_grpc.GenerationServiceStub, i: int) -> None:
        req = pb.SingleGenerationRequest(request=pb.GenerationRequest(text=f"burst {i}"), params=params(LONG))
        try:
            msgs = [m async for m in stub.GenerateStream(req)]
            done.append(("ok", msgs[-1].generated_token_count))
        except grpc.aio.AioRpcError as exc:
            done.append((exc.code().name, 0))

    async def http_one(session: aiohttp.ClientSession, i: int) -> None:
        body = {"inputs": f"burst {i}", "parameters": {"max_new_tokens": LONG, "details": True}}
        async with session.post(router.http + "/generate", json=body) as resp:
            out = await resp.json()
            done.append(("ok", out["details"]["generated_tokens"]) if resp.status == 200 else
                        (str(resp.status), 0))

    async with grpc.aio.insecure_channel(router.grpc) as channel, aiohttp.ClientSession() as session:
        stub = pb_grpc.GenerationServiceStub(channel)
        await channel.channel_ready()
        calls = [grpc_one(stub, i) if i % 2 else http_one(session, i) for i in range(BURST)]
        await asyncio.gather(*calls)
    return done


def test_burst_of_10x_max_concurrent_refuses_the_excess_at_once(faults: tuple[RouterProc, list[int]]):
    router, golden = faults
    rss_before = rss_bytes(router.proc.pid)
    done = asyncio.run(_burst(router))
    outcomes = {o for o, _ in done}
    assert outcomes <= {"ok", "RESOURCE_EXHAUSTED", "429"}, done
    admitted = [n for o, n in done if o == "ok"]
    assert len(admitted) >= MAX_CONCURRENT and len(admitted) < BURST
    assert all(n == LONG for n in admitted)  # every admitted request completed in full
    first_ok = next(i for i, (o, _) in enumerate(done) if o == "ok")
    assert all(o != "ok" for o, _ in done[:first_ok]) and first_ok >= BURST - len(admitted) - 1, \
        "refusals must come back before any admitted request finishes"
    _idle(router)
    assert golden_ids(router) == golden
    assert rss_bytes(router.proc.pid) - rss_before < 64 << 20


def test_clients_that_stop_reading_hold_no_engine_resources(faults: tuple[RouterProc, list[int]]):
    router, golden = faults
    host, port = router.http.removeprefix("http://").split(":")
    rss_before, count = rss_bytes(router.proc.pid), metric(router, "tgi_request_count")
    body = b'{"inputs": "never read", "parameters": {"max_new_tokens": 600, "details": true}}'
    socks = []
    channel = grpc.insecure_channel(router.grpc)
    try:
        for _ in range(2):
            sock = socket.create_connection((host, int(port)), timeout=60)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"POST /generate_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            socks.append(sock)
        stalled = pb_grpc.GenerationServiceStub(channel).GenerateStream(pb.SingleGenerationRequest(
            request=pb.GenerationRequest(text="never read"), params=params(600)))
        wait_for(lambda: metric(router, "tgi_request_count") >= count + 3, "the unread requests arrived",
                 BUSY_S)
        # the engine finishes them and frees their KV although nobody reads: the text waits in a
        # per-request buffer bounded by max_new_tokens (and socket buffers), not in the batch
        _idle(router)
        assert golden_ids(router) == golden  # others are served meanwhile
        assert rss_bytes(router.proc.pid) - rss_before < 64 << 20
        stalled.cancel()
    finally:
        for sock in socks:
            sock.close()
        channel.close()
    _idle(router)


def _resident(router: RouterProc) -> dict[str, float]:
    text = requests.get(router.http + "/metrics", timeout=30).text
    out = {}
    for line in text.splitlines():
        if line.startswith("chameleon_adapter_resident_pages{"):
            name = line.split('adapter="', 1)[1].split('"', 1)[0]
            out[name] = float(line.rsplit(" ", 1)[1])
    return out


def _concurrent(router: RouterProc, adapters: list[str]) -> list[requests.Response]:
    async def run() -> list[requests.Response]:
        return await asyncio.gather(*(asyncio.to_thread(adapter_request, router, a) for a in adapters))

    return asyncio.run(run())


def test_adapter_corrupted_after_listing_fails_alone_and_caches_nothing(
        faults: tuple[RouterProc, list[int]], shard: Shard):
    router, golden = faults
    weights = shard.adapters / "c0" / "adapter_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:8] + b"\x00garbage" * 64)  # after the router's scan, before any load
    try:
        wanted = ["c0", "a01", "c0", "a02"]  # == --max-concurrent-requests: none is refused
        for r, a in zip(_concurrent(router, wanted), wanted, strict=True):
            if a == "c0":
                assert r.status_code == 422, r.text
                assert "'c0' cannot be loaded" in r.json()["error"] and "c0" in r.json()["error"]
            else:
                assert r.status_code == 200, r.text
        assert "c0" not in _resident(router)
        # A request for c0 that arrives after the refusal (on a busy machine one of the concurrent
        # ones above can): the router forgot c0's size facts and re-reads the corrupt folder itself.
        # Still "cannot be loaded", never "unknown adapter": the folder is there.
        late = adapter_request(router, "c0")
        assert late.status_code == 422 and "'c0' cannot be loaded" in late.json()["error"], late.text
        _idle(router)
    finally:
        weights.write_bytes(good)
    assert adapter_request(router, "c0").status_code == 200  # repaired: loads afresh
    assert "c0" in _resident(router)
    assert golden_ids(router) == golden


def test_adapter_deleted_after_listing_fails_clearly_then_is_unknown(
        faults: tuple[RouterProc, list[int]], shard: Shard):
    router, golden = faults
    folder = shard.adapters / "c1"
    shutil.rmtree(folder)
    try:
        first = adapter_request(router, "c1")
        assert first.status_code == 422 and "'c1' cannot be loaded" in first.json()["error"], first.text
        again = adapter_request(router, "c1")  # nothing stale: the registry looked again
        assert again.status_code == 422 and "unknown adapter 'c1'" in again.json()["error"], again.text
        assert adapter_request(router, "a03").status_code == 200
        assert "c1" not in _resident(router)
    finally:
        shutil.copytree(shard.source, folder)
    assert adapter_request(router, "c1").status_code == 200
    _idle(router)
    assert golden_ids(router) == golden


def test_admin_unload_counts_as_an_eviction(faults: tuple[RouterProc, list[int]]):
    router, _ = faults
    assert adapter_request(router, "a00").status_code == 200
    before = metric(router, "chameleon_cache_evictions_total")
    resp = requests.post(router.http + "/v1/unload_lora_adapter", json={"lora_name": "a00"}, timeout=30)
    assert resp.status_code == 200, resp.text
    assert metric(router, "chameleon_cache_evictions_total") == before + 1
    assert "a00" not in _resident(router)


def test_cancellation_storm_leaves_allocator_and_refcounts_intact(faults: tuple[RouterProc, list[int]]):
    router, golden = faults
    names = ["a00", "a01", "a02", "a03", None]

    async def storm() -> int:
        cancelled = 0
        async with grpc.aio.insecure_channel(router.grpc) as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            for round_ in range(8):
                calls = [stub.GenerateStream(pb.SingleGenerationRequest(
                    adapter_id=names[(round_ + i) % 5], request=pb.GenerationRequest(text=f"storm {i}"),
                    params=params(300))) for i in range(MAX_CONCURRENT)]
                await asyncio.gather(*(c.read() for c in calls))  # accepted (first message)
                if round_ % 2:
                    await asyncio.gather(*(c.read() for c in calls))  # some are mid-generation
                for c in calls:
                    cancelled += c.cancel()
                await asyncio.to_thread(_idle, router)  # released before the next round comes in
        return cancelled

    assert asyncio.run(storm()) == 8 * MAX_CONCURRENT
    _idle(router)
    assert golden_ids(router) == golden  # one more step: the shard's headroom is fresh
    state = integrity(read_metrics(router.http + "/metrics"))
    assert state["ok"], state
