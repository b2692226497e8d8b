"""chameleon.v1.AdapterAdmin on the router's gRPC port: list, pre-warm (load) and unload adapters."""

from __future__ import annotations

import grpc
from chameleon_pb import chameleon_pb2 as cpb
from chameleon_pb import chameleon_pb2_grpc as cpb_grpc

from router.api.admin import AdapterAdmin
from router.api.grpc_fmaas import abort
from router.engine.types import AdapterStatus
from router.errors import ApiError


def adapter_info(a: AdapterStatus) -> cpb.AdapterInfo:
    return cpb.AdapterInfo(
        adapter_id=a.adapter_id,
        rank=a.rank,
        bytes=a.nbytes,
        pages=a.pages,
        resident=a.resident,
        target_modules=list(a.target_modules),
        alpha=a.alpha,
    )


class AdapterAdminServicer(cpb_grpc.AdapterAdminServicer):
    def __init__(self, admin: AdapterAdmin) -> None:
        self.admin = admin

    async def ListAdapters(
        self, request: cpb.ListAdaptersRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ListAdaptersResponse:
        return cpb.ListAdaptersResponse(adapters=[adapter_info(a) for a in self.admin.list()])

    async def LoadAdapter(
        self, request: cpb.LoadAdapterRequest, context: grpc.aio.ServicerContext
    ) -> cpb.LoadAdapterResponse:
        try:
            status, load_ns = await self.admin.load(request.adapter_id)
        except ApiError as exc:
            await abort(context, exc)
            raise
        return cpb.LoadAdapterResponse(adapter=adapter_info(status), load_ns=load_ns)

    async def UnloadAdapter(
        self, request: cpb.OffloadAdapterRequest, context: grpc.aio.ServicerContext
    ) -> cpb.OffloadAdapterResponse:
        try:
            was_resident = await self.admin.unload(request.adapter_id)
        except ApiError as exc:
            await abort(context, exc)
            raise
        return cpb.OffloadAdapterResponse(was_resident=was_resident)
