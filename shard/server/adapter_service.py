"""chameleon.v1.AdapterService: the router loads adapters into pages it assigns, offloads them, lists
them and reads headroom. Empty `pages` means the shard picks free pages of its own region."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

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
