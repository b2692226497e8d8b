"""Talk to every shard rank: `generate.v3.TextGenerationService` + `chameleon.v1.AdapterService`.

Connection follows TGI: the router knows rank 0's unix socket; ServiceDiscovery on it returns every
rank's URL; the router opens one channel per rank. Every RPC goes to every rank concurrently and the
replies are merged: generations concatenated (each rank answers for `request_id % world == rank`),
the CachedBatch taken from rank 0, and the headroom (field 100) collected per rank.

Any failed rank fails the whole call with `ShardError` carrying the rank and the gRPC message.
A shard that speaks only generate.v3 (`probe_protocol`) gets no chameleon.v1 call and sends no headroom.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from chameleon_pb import chameleon_pb2, chameleon_pb2_grpc, generate_pb2, generate_pb2_grpc

from router.engine.protocol import CHAMELEON_V1, ShardProtocol, protocol_for_probe

_OPTIONS = (("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20))


class ShardError(RuntimeError):
    """A shard RPC failed on one rank (the message names the RPC, the rank and the shard's reason)."""

    def __init__(self, rpc: str, rank: int, detail: str, code: str = "UNKNOWN", every_rank: bool = True,
                 ) -> None:
        super().__init__(f"shard rank {rank} failed {rpc}: {detail}")
        self.rpc, self.rank, self.detail, self.code = rpc, rank, detail, code
        self.every_rank = every_rank  # False: other ranks answered otherwise (their states diverged)

    @property
    def is_request_error(self) -> bool:
        """Every rank refused the input (bad adapter, bad argument) the same way: the call changed no
        shard state and the shards are fine. A refusal on some ranks only is a fault."""
        return self.every_rank and self.code in ("INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION")


@dataclass(frozen=True, slots=True)
class StepResult:
    """A merged Prefill/Decode reply. `batch` None = every request of the step finished (or was
    refused). `rejected`: {request id: reason} of the requests the shards refused before the step."""

    generations: list[generate_pb2.Generation]
    batch: generate_pb2.CachedBatch | None
    headroom: list[chameleon_pb2.Headroom]
    forward_ns: int
    total_ns: int
    rejected: dict[int, str] = field(default_factory=dict)


def uds_url(path: str) -> str:
    return path if path.startswith("unix:") else f"unix://{path}"


class _Rank:
    def __init__(self, rank: int, url: str) -> None:
        self.rank, self.url = rank, url
        self.channel = grpc.aio.insecure_channel(url, options=_OPTIONS)
        self.gen = generate_pb2_grpc.TextGenerationServiceStub(self.channel)
        self.ad = chameleon_pb2_grpc.AdapterServiceStub(self.channel)


class ShardClient:
    """One client for all ranks. Create with `await ShardClient.connect(master_uds_path)`."""

    def __init__(self, urls: Sequence[str], timeout_s: float | None = None) -> None:
        if not urls:
            raise ValueError("no shard URLs")
        self._ranks = [_Rank(k, u) for k, u in enumerate(urls)]
        self._timeout = timeout_s
        self.rpc_s = 0.0  # wall time spent awaiting fanned-out RPCs (for the loop's host-time figure)

    @classmethod
    async def connect(cls, master_uds_path: str, wait_s: float = 60.0,
                      timeout_s: float | None = None) -> ShardClient:
        """ServiceDiscovery on rank 0, then a channel per rank; waits up to `wait_s` for the sockets."""
        master = uds_url(master_uds_path)
        async with grpc.aio.insecure_channel(master, options=_OPTIONS) as channel:
            stub = generate_pb2_grpc.TextGenerationServiceStub(channel)
            try:
                reply = await stub.ServiceDiscovery(generate_pb2.ServiceDiscoveryRequest(),
                                                    wait_for_ready=True, timeout=wait_s)
            except grpc.aio.AioRpcError as exc:
                hint = "" if Path(master.removeprefix("unix://")).exists() else (
                    " (no such socket: is `chameleon shard ... --uds-path PREFIX` running? rank 0 listens "
                    "on PREFIX-0)")
                detail = f"{master}: {exc.details() or exc.code()}{hint}"
                raise ShardError("ServiceDiscovery", 0, detail) from exc
        client = cls(list(reply.urls) or [master], timeout_s)
        await asyncio.gather(*(client._ready(r, wait_s) for r in client._ranks))
        return client

    async def _ready(self, r: _Rank, wait_s: float) -> None:
        try:
            await asyncio.wait_for(r.channel.channel_ready(), wait_s)
        except asyncio.TimeoutError as exc:
            raise ShardError("connect", r.rank, f"{r.url} not ready after {wait_s:.0f}s") from exc

    @property
    def world_size(self) -> int:
        return len(self._ranks)

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self._ranks]

    async def close(self) -> None:
        await asyncio.gather(*(r.channel.close() for r in self._ranks), return_exceptions=True)

    async def _fan(self, rpc: str, call: Callable[[_Rank], Awaitable[Any]]) -> list[Any]:
        """Run `call` on every rank concurrently; the first failure (by rank) raises ShardError."""
        t0 = time.perf_counter()
        results = await asyncio.gather(*(call(r) for r in self._ranks), return_exceptions=True)
        self.rpc_s += time.perf_counter() - t0
        codes = {res.code() for res in results if isinstance(res, grpc.aio.AioRpcError)}
        every = len(codes) == 1 and all(isinstance(res, grpc.aio.AioRpcError) for res in results)
        for r, res in zip(self._ranks, results, strict=True):
            if isinstance(res, grpc.aio.AioRpcError):
                raise ShardError(rpc, r.rank, f"{res.code().name}: {res.details()}", res.code().name, every)
            if isinstance(res, BaseException):
                raise ShardError(rpc, r.rank, f"{type(res).__name__}: {res}")
        return results

    # --- generate.v3 -------------------------------------------------------------------------
    async def info(self) -> list[generate_pb2.InfoResponse]:
        req = generate_pb2.InfoRequest()
        return await self._fan("Info", lambda r: r.gen.Info(req, timeout=self._timeout))

    async def health(self, timeout_s: float = 10.0) -> None:
        await self._fan("Health", lambda r: r.gen.Health(generate_pb2.HealthRequest(), timeout=timeout_s))

    async def clear_cache(self, batch_id: int | None = None) -> None:
        req = generate_pb2.ClearCacheRequest()
        if batch_id is not None:
            req.id = batch_id
        await self._fan("ClearCache", lambda r: r.gen.ClearCache(req, timeout=self._timeout))

    async def warmup(self, req: generate_pb2.WarmupRequest) -> list[generate_pb2.WarmupResponse]:
        return await self._fan("Warmup", lambda r: r.gen.Warmup(req))

    async def prefill(self, batch: generate_pb2.Batch, timeout_s: float | None = None) -> StepResult:
        req = generate_pb2.PrefillRequest(batch=batch)
        t = timeout_s if timeout_s is not None else self._timeout
        return _merge("Prefill", await self._fan("Prefill", lambda r: r.gen.Prefill(req, timeout=t)))

    async def decode(self, batches: Sequence[generate_pb2.CachedBatch]) -> StepResult:
        req = generate_pb2.DecodeRequest(batches=batches)
        return _merge("Decode", await self._fan("Decode", lambda r: r.gen.Decode(req, timeout=self._timeout)))

    async def filter_batch(self, batch_id: int, request_ids: Sequence[int],
                           ) -> tuple[generate_pb2.CachedBatch | None, list[chameleon_pb2.Headroom]]:
        """Keep only `request_ids` of the cached batch. Returns (batch or None when empty, headroom)."""
        req = generate_pb2.FilterBatchRequest(batch_id=batch_id, request_ids=request_ids)
        replies = await self._fan("FilterBatch", lambda r: r.gen.FilterBatch(req, timeout=self._timeout))
        first = replies[0]
        batch = first.batch if first.HasField("batch") and first.batch.size > 0 else None
        return batch, [x.headroom for x in replies if x.HasField("headroom")]

    # --- chameleon.v1.AdapterService -----------------------------------------------------------
    async def load_adapter(self, adapter_id: str, pages: Sequence[int],
                           ) -> list[chameleon_pb2.LoadAdapterResponse]:
        req = chameleon_pb2.LoadAdapterRequest(adapter_id=adapter_id, pages=pages)
        return await self._fan("LoadAdapter", lambda r: r.ad.LoadAdapter(req, timeout=self._timeout))

    async def offload_adapter(self, adapter_id: str) -> list[chameleon_pb2.OffloadAdapterResponse]:
        req = chameleon_pb2.OffloadAdapterRequest(adapter_id=adapter_id)
        return await self._fan("OffloadAdapter", lambda r: r.ad.OffloadAdapter(req, timeout=self._timeout))

    async def list_adapters(self) -> chameleon_pb2.ListAdaptersResponse:
        """Rank 0's view (every rank loads the same adapters)."""
        rank0 = self._ranks[0]
        try:
            return await rank0.ad.ListAdapters(chameleon_pb2.ListAdaptersRequest(), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise ShardError("ListAdapters", 0, f"{exc.code().name}: {exc.details()}",
                             exc.code().name) from exc

    async def probe_protocol(self) -> ShardProtocol:
        """Does rank 0 serve chameleon.v1.AdapterService (ListAdapters answers) or only generate.v3
        (UNIMPLEMENTED)? Any other failure raises ShardError."""
        try:
            await self.list_adapters()
        except ShardError as exc:
            protocol = protocol_for_probe(exc.code)
            if protocol is None:
                raise
            return protocol
        return CHAMELEON_V1

    async def resize_pool(self, num_pages: int) -> list[chameleon_pb2.ResizePoolResponse]:
        """Elastic pool: every rank keeps pages [0, num_pages) allocated (chameleon.v1.ResizePool)."""
        req = chameleon_pb2.ResizePoolRequest(num_pages=num_pages)
        return await self._fan("ResizePool", lambda r: r.ad.ResizePool(req, timeout=self._timeout))

    async def headroom(self) -> list[chameleon_pb2.Headroom]:
        req = chameleon_pb2.HeadroomRequest()
        return await self._fan("GetHeadroom", lambda r: r.ad.GetHeadroom(req, timeout=self._timeout))


def _merge(rpc: str, replies: list[Any]) -> StepResult:
    first = replies[0]
    gens: list[generate_pb2.Generation] = []
    for x in replies:
        gens.extend(x.generations)
    rejected = [{r.request_id: r.reason for r in getattr(x, "rejected", ())} for x in replies]
    for rank, theirs in enumerate(rejected):
        if theirs.keys() != rejected[0].keys():
            raise ShardError(rpc, rank, f"refused requests {sorted(theirs)[:8]} where rank 0 refused "
                                        f"{sorted(rejected[0])[:8]}: the ranks' batches diverged")
    return StepResult(
        generations=gens,
        batch=first.batch if first.HasField("batch") else None,
        headroom=[x.headroom for x in replies if x.HasField("headroom")],
        forward_ns=max(x.forward_ns for x in replies),
        total_ns=max(x.total_ns for x in replies),
        rejected=rejected[0],
    )
