"""v3-only mode in parts: the protocol probe (against in-process fake shards, with and without
chameleon.v1.AdapterService), the residency seam that sends no adapter RPCs, zero-page adapters in the
memory manager, warmup sizing without Chameleon's pool field, and the shard's reply stripping."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import grpc
import pytest
from chameleon_pb import chameleon_pb2, chameleon_pb2_grpc, generate_pb2, generate_pb2_grpc

from chameleon.core.adapters import AdapterSpec
from chameleon.core.allocator import PagePool
from chameleon.core.cache import make_cache
from chameleon.core.memory_manager import MemoryManager
from chameleon.core.request import Request
from router.engine.config import EngineConfig
from router.engine.health import LIVENESS_ID
from router.engine.protocol import CHAMELEON_V1, GENERATE_V3, protocol_for_probe, protocol_warnings
from router.engine.residency import ShardAdapters
from router.engine.residency_v3 import SelfLoadingShards, make_residency
from router.engine.shard_client import ShardClient, ShardError, StepResult
from router.engine.startup import _facts
from shard.server.plain_v3 import strip_extensions


def test_probe_decision() -> None:
    assert protocol_for_probe(None) == CHAMELEON_V1
    assert protocol_for_probe("UNIMPLEMENTED") == GENERATE_V3
    for code in ("UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED", "UNKNOWN"):
        assert protocol_for_probe(code) is None  # a broken shard is no protocol answer
    assert protocol_warnings(CHAMELEON_V1) == ()
    assert "generate.v3" in protocol_warnings(GENERATE_V3)[0]


class _V3Rank(generate_pb2_grpc.TextGenerationServiceServicer):
    def __init__(self, url: str) -> None:
        self.url = url

    async def ServiceDiscovery(self, request, context):
        return generate_pb2.ServiceDiscoveryResponse(urls=[self.url])


class _Adapters(chameleon_pb2_grpc.AdapterServiceServicer):
    def __init__(self, broken: bool) -> None:
        self.broken = broken

    async def ListAdapters(self, request, context):
        if self.broken:
            await context.abort(grpc.StatusCode.INTERNAL, "adapter store is broken (fake)")
        return chameleon_pb2.ListAdaptersResponse()


async def _probe(adapter_service: str | None) -> str:
    """Probe a fake rank that serves generate.v3 plus, unless None, an AdapterService ('ok'/'broken')."""
    url = f"unix://{Path(tempfile.mkdtemp(prefix='cv3-', dir='/tmp')) / 's'}-0"
    server = grpc.aio.server()
    generate_pb2_grpc.add_TextGenerationServiceServicer_to_server(_V3Rank(url), server)
    if adapter_service is not None:
        service = _Adapters(broken=adapter_service == "broken")
        chameleon_pb2_grpc.add_AdapterServiceServicer_to_server(service, server)
    server.add_insecure_port(url)
    await server.start()
    client = await ShardClient.connect(url.removeprefix("unix://"), wait_s=10)
    try:
        return await client.probe_protocol()
    finally:
        await client.close()
        await server.stop(None)


def test_probe_against_fake_shards() -> None:
    assert asyncio.run(_probe(None)) == GENERATE_V3
    assert asyncio.run(_probe("ok")) == CHAMELEON_V1
    with pytest.raises(ShardError, match="adapter store is broken"):
        asyncio.run(_probe("broken"))


class _Client:
    """Records what a residency sends; refuses the adapters in `refuse` as a shard would."""

    def __init__(self, refuse: frozenset[str] = frozenset()) -> None:
        self.refuse, self.sent = refuse, []

    async def prefill(self, batch: generate_pb2.Batch, timeout_s: float | None = None) -> StepResult:
        req = batch.requests[0]
        aid = req.adapter_id
        self.sent.append(("Prefill", batch.id, [r.id for r in batch.requests], list(req.blocks), aid))
        if aid in self.refuse:
            raise ShardError("Prefill", 0, f"unknown adapter {aid!r}", "INVALID_ARGUMENT")
        return StepResult([], generate_pb2.CachedBatch(id=batch.id), [], 0, 0)

    async def clear_cache(self, batch_id: int | None = None) -> None:
        self.sent.append(("ClearCache", batch_id))

    def __getattr__(self, name: str):
        raise AssertionError(f"v3-only residency must not call {name}")


def test_self_loading_residency_probes_once_and_sends_no_adapter_rpcs() -> None:
    client = _Client(refuse=frozenset({"bad"}))
    res = SelfLoadingShards(client)  # type: ignore[arg-type]

    async def run() -> None:
        await res.ensure("a1", [], 100)
        await res.ensure("a1", [], 100)  # proven: nothing sent
        with pytest.raises(ShardError) as err:
            await res.ensure("bad", [], 100)
        assert err.value.is_request_error
        await res.offload(["a1", "bad"])
        res.forget_all()  # after a shard failure: probed again
        await res.ensure("a1", [], 100)

    asyncio.run(run())
    probes = [s for s in client.sent if s[0] == "Prefill"]
    assert probes == [("Prefill", LIVENESS_ID, [LIVENESS_ID], [0], a) for a in ("a1", "bad", "a1")]
    assert client.sent.count(("ClearCache", LIVENESS_ID)) == 2  # the successful probes' batches
    assert res.loads == 2 and res.offloads == 0 and res.resident() == {}
    assert res.holds("a1", [])
    assert isinstance(make_residency(GENERATE_V3, client), SelfLoadingShards)  # type: ignore[arg-type]
    assert isinstance(make_residency(CHAMELEON_V1, client), ShardAdapters)  # type: ignore[arg-type]


def test_zero_page_adapters_cost_no_pool_pages() -> None:
    specs = {"a": AdapterSpec("a", 8, 4096, 0)}
    mem = MemoryManager(PagePool(10, reserved=(0,)), make_cache("none"), 16, specs.__getitem__)
    r1 = Request(id=1, adapter_id="a", input_tokens=20, max_new_tokens=12, arrival=0.0)
    r2 = Request(id=2, adapter_id="a", input_tokens=20, max_new_tokens=12, arrival=0.0)
    adm = mem.try_admit(r1, 1.0)
    assert adm is not None and adm.load_adapter and adm.adapter_pages == [] and len(adm.kv_pages) == 2
    again = mem.try_admit(r2, 1.0)
    assert again is not None and again.hit and not again.load_adapter
    mem.check_integrity()
    assert mem.pool.used_by_tenant()["adapter"] == 0
    mem.release(1, 2.0)
    mem.release(2, 2.0)
    assert "a" not in mem.cache and mem.take_offloads() == ["a"]  # the residency makes this a no-op
    mem.check_integrity()
    assert mem.pool.free_pages() == 9


def test_warmup_without_pool_field_counts_blocks_as_tgi_does() -> None:
    cfg = EngineConfig(master_shard_uds_path="/x", model_dir=Path("/m"))
    info = generate_pb2.InfoResponse(dtype="float32", block_size=16)  # no ShardInfo (field 100)
    warm = generate_pb2.WarmupResponse(max_supported_total_tokens=1600, max_input_tokens=100,
                                       max_total_tokens=800)
    facts = _facts(cfg, info, [warm])
    assert facts.info.num_pages == 100  # blocks 0..99 (0 reserved): never a block past the shard's KV
    assert facts.info.max_total_tokens == 800 and facts.info.page_bytes == 0


def test_strip_extensions_leaves_plain_generate_v3() -> None:
    reply = generate_pb2.PrefillResponse(generations=[generate_pb2.Generation(request_id=3)], forward_ns=5,
                                         headroom=chameleon_pb2.Headroom(rank=0, pool_pages_used=7))
    strip_extensions(reply)
    assert not reply.HasField("headroom") and reply.generations[0].request_id == 3 and reply.forward_ns == 5
    info = strip_extensions(generate_pb2.InfoResponse(block_size=16,
                                                      chameleon=chameleon_pb2.ShardInfo(rank=1)))
    assert not info.HasField("chameleon") and info.block_size == 16
    warm = strip_extensions(generate_pb2.WarmupResponse(max_supported_total_tokens=32,
                                                        pool=chameleon_pb2.PoolLayout(num_pages=3)))
    assert not warm.HasField("pool") and warm.max_supported_total_tokens == 32
