"""chameleon.v1.AdapterService: the router loads adapters into pages it assigns, offloads them, lists
them, reads headroom and resizes the elastic pool. Empty `pages` means the shard picks free pages of its
own region."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import grpc
from chameleon_pb import chameleon_pb2, chameleon_pb2_grpc

from shard.server.servicer import ShardCore

if TYPE_CHECKING:
    from shard.lora.store import AdapterInfo


def adapter_info_pb(info: AdapterInfo, resident: bool = True) -> chameleon_pb2.AdapterInfo:
    return chameleon_pb2.AdapterInfo(
        adapter_id=info.adapter_id, rank=info.rank, bytes=info.nbytes, pages=len(info.pages),
        resident=resident, target_modules=list(info.target_modules), alpha=info.alpha,
        dtype=getattr(info, "dtype", ""))


class AdapterService(chameleon_pb2_grpc.AdapterServiceServicer):
    def __init__(self, core: ShardCore) -> None:
        self.core = core

    def LoadAdapter(self, request: chameleon_pb2.LoadAdapterRequest,
                    context: grpc.ServicerContext | None) -> chameleon_pb2.LoadAdapterResponse:
        return self.core.locked(lambda: self._load(request))

    def _load(self, request: chameleon_pb2.LoadAdapterRequest) -> chameleon_pb2.LoadAdapterResponse:
        t0 = time.perf_counter_ns()
        if not self.core.runner.num_pages:
            raise ValueError("the shard has no pool yet: call Warmup before loading adapters")
        manager = self.core.adapter_manager
        busy_pages, busy_adapters = self.core.busy()
        pool = self.core.runner.pool
        beyond = [p for p in request.pages if pool is not None and p >= pool.allocated_pages]
        if beyond:
            raise ValueError(f"pages {beyond[:8]} were released (the pool holds {pool.allocated_pages} "
                             "pages now; ResizePool first)")
        if request.pages:
            info = manager.load_assigned(request.adapter_id, list(request.pages), busy_pages, busy_adapters)
        else:
            manager.ensure_resident([request.adapter_id], busy_pages, busy_adapters)
            info = manager.store.info(request.adapter_id)
        return chameleon_pb2.LoadAdapterResponse(adapter=adapter_info_pb(info),
                                                 load_ns=time.perf_counter_ns() - t0,
                                                 headroom=self.core.headroom())

    def OffloadAdapter(self, request: chameleon_pb2.OffloadAdapterRequest,
                       context: grpc.ServicerContext | None) -> chameleon_pb2.OffloadAdapterResponse:
        return self.core.locked(lambda: self._offload(request))

    def _offload(self, request: chameleon_pb2.OffloadAdapterRequest) -> chameleon_pb2.OffloadAdapterResponse:
        manager = self.core.adapter_manager
        was = manager.store.has(request.adapter_id)
        if was:
            _, busy = self.core.busy()
            if request.adapter_id in busy:
                raise ValueError(f"adapter {request.adapter_id!r} is used by a running batch; "
                                 "filter or clear that batch first")
            manager.offload(request.adapter_id)
        return chameleon_pb2.OffloadAdapterResponse(was_resident=was, headroom=self.core.headroom())

    def ListAdapters(self, request: chameleon_pb2.ListAdaptersRequest,
                     context: grpc.ServicerContext | None) -> chameleon_pb2.ListAdaptersResponse:
        def run() -> chameleon_pb2.ListAdaptersResponse:
            store = self.core.adapter_manager.store
            resident = {a.adapter_id: a for a in store.resident()}
            out = [adapter_info_pb(a) for a in resident.values()]
            out += [chameleon_pb2.AdapterInfo(adapter_id=a, resident=False)
                    for a in self.core.adapter_manager.available() if a not in resident]
            return chameleon_pb2.ListAdaptersResponse(adapters=out)
        return self.core.locked(run)

    def GetHeadroom(self, request: chameleon_pb2.HeadroomRequest,
                    context: grpc.ServicerContext | None) -> chameleon_pb2.Headroom:
        return self.core.locked(self.core.headroom)

    def ResizePool(self, request: chameleon_pb2.ResizePoolRequest,
                   context: grpc.ServicerContext | None) -> chameleon_pb2.ResizePoolResponse:
        return self.core.locked(lambda: self._resize(request))

    def _resize(self, request: chameleon_pb2.ResizePoolRequest) -> chameleon_pb2.ResizePoolResponse:
        """Refused (INVALID_ARGUMENT, nothing changes) while KV of a cached batch or a resident adapter
        lives in a page that would be released; the allocator is checked after the resize."""
        t0 = time.perf_counter_ns()
        runner = self.core.runner
        if runner.pool is None:
            raise ValueError("the shard has no pool yet: call Warmup before ResizePool")
        n = request.num_pages
        if not 2 <= n <= runner.num_pages:
            raise ValueError(f"num_pages must be in [2, {runner.num_pages}] (the pool's full size), got {n}")
        busy_pages, _ = self.core.busy()
        adapters = self.core.adapter_manager.store.resident()
        held = sorted(p for p in busy_pages | {p for a in adapters for p in a.pages} if p >= n)
        if held:
            raise ValueError(f"cannot release pages >= {n}: pages {held[:8]} hold KV of a cached batch "
                             "or a resident adapter")
        released = runner.resize_pool(n)
        check_pool(runner.pool, adapters, busy_pages)
        return chameleon_pb2.ResizePoolResponse(
            num_pages=runner.pool.allocated_pages, released_bytes=max(released, 0),
            allocated_bytes=runner.pool.nbytes, resize_ns=time.perf_counter_ns() - t0,
            headroom=self.core.headroom())


def check_pool(pool: Any, adapters: list[Any], kv_pages: set[int]) -> None:
    """The shard pool's integrity after a resize: allocated pages within the pool and on a page, every
    resident adapter's and cached batch's page allocated, no page held by two adapters."""
    if not 2 <= pool.allocated_pages <= pool.num_pages:
        raise RuntimeError(f"pool allocates {pool.allocated_pages} of {pool.num_pages} pages")
    if pool.buffer.numel() < pool.allocated_pages * pool.page_elems:
        raise RuntimeError("pool buffer is smaller than its allocated pages")
    seen: set[int] = set()
    for info in adapters:
        if any(p >= pool.allocated_pages or p in seen for p in info.pages):
            raise RuntimeError(f"adapter {info.adapter_id!r} holds a released or shared page")
        seen.update(info.pages)
    if any(p >= pool.allocated_pages for p in kv_pages):
        raise RuntimeError("a cached batch holds a released page")
