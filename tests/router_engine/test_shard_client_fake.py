"""ShardClient fan-out and merge over two ranks, against an in-process fake generate.v3 servicer
(defined here, in the test only): ServiceDiscovery, generations split by request_id % world,
CachedBatch from rank 0, headroom per rank, and a failing rank named in the error."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import grpc
import pytest
from chameleon_pb import chameleon_pb2, generate_pb2, generate_pb2_grpc

from router.engine.shard_client import ShardClient, ShardError


class FakeRank(generate_pb2_grpc.TextGenerationServiceServicer):
    def __init__(self, rank: int, urls: list[str], fail_decode: bool = False) -> None:
        self.rank, self.urls, self.fail_decode = rank, urls, fail_decode
        self.calls: list[str] = []

    async def ServiceDiscovery(self, request, context):
        return generate_pb2.ServiceDiscoveryResponse(urls=self.urls)

    async def Info(self, request, context):
        self.calls.append("Info")
        return generate_pb2.InfoResponse(dtype="float32", device_type="cpu", block_size=16)

    async def ClearCache(self, request, context):
        self.calls.append(f"ClearCache:{request.id if request.HasField('id') else 'all'}")
        return generate_pb2.ClearCacheResponse()

    async def Prefill(self, request, context):
        ids = [r.id for r in request.batch.requests]
        mine = [i for i in ids if i % len(self.urls) == self.rank]
        gens = [generate_pb2.Generation(request_id=i, tokens=generate_pb2.Tokens(ids=[100 + i], texts=["x"],
                                                                                logprobs=[-0.5]))
                for i in mine]
        batch = generate_pb2.CachedBatch(id=request.batch.id + 10 * self.rank, request_ids=ids, size=len(ids))
        room = chameleon_pb2.Headroom(rank=self.rank, pool_pages_used=7)
        return generate_pb2.PrefillResponse(generations=gens, batch=batch, headroom=room)

    async def Decode(self, request, context):
        if self.fail_decode:
            await context.abort(grpc.StatusCode.INTERNAL, "CUDA out of memory (fake)")
        return generate_pb2.DecodeResponse()


async def _serve(n: int, fail_rank: int | None) -> tuple[list[grpc.aio.Server], list[FakeRank], str]:
    base = Path(tempfile.mkdtemp(prefix="cf-", dir="/tmp")) / "s"
    urls = [f"unix://{base}-{k}" for k in range(n)]
    servers, ranks = [], []
    for k in range(n):
        server = grpc.aio.server()
        rank = FakeRank(k, urls, fail_decode=(k == fail_rank))
        generate_pb2_grpc.add_TextGenerationServiceServicer_to_server(rank, server)
        server.add_insecure_port(urls[k])
        await server.start()
        servers.append(server)
        ranks.append(rank)
    return servers, ranks, f"{base}-0"


def test_fan_out_merges_generations_and_names_the_failing_rank() -> None:
    async def run() -> None:
        servers, ranks, master = await _serve(2, fail_rank=1)
        client = await ShardClient.connect(master, wait_s=10)
        try:
            assert client.world_size == 2
            infos = await client.info()
            assert [i.block_size for i in infos] == [16, 16]
            await client.clear_cache(5)
            assert all("ClearCache:5" in r.calls for r in ranks)
            reqs = [generate_pb2.Request(id=i) for i in range(5)]
            res = await client.prefill(generate_pb2.Batch(id=3, requests=reqs, size=5))
            assert sorted(g.request_id for g in res.generations) == [0, 1, 2, 3, 4]
            assert res.batch is not None and res.batch.id == 3  # rank 0's CachedBatch
            assert sorted(h.rank for h in res.headroom) == [0, 1]
            with pytest.raises(ShardError) as err:
                await client.decode([res.batch])
            assert err.value.rank == 1 and "CUDA out of memory (fake)" in str(err.value)
            assert not err.value.is_request_error
        finally:
            await client.close()
            for s in servers:
                await s.stop(None)

    asyncio.run(run())


def test_connect_to_missing_socket_fails_clearly() -> None:
    async def run() -> None:
        with pytest.raises(ShardError) as err:
            await ShardClient.connect("/tmp/definitely-not-a-shard-socket-0", wait_s=0.5)
        assert "ServiceDiscovery" in str(err.value)

    asyncio.run(run())
