"""Malformed gRPC messages get INVALID_ARGUMENT, not UNKNOWN.

grpc.aio turns an exception of a request deserializer into status UNKNOWN ("Unexpected DecodeError");
a corrupt wire format or a string field with invalid UTF-8 is the client's mistake, so this
interceptor swaps in a deserializer that catches the error and a behaviour that answers
INVALID_ARGUMENT with protobuf's reason. Unary-request methods only (every client method here).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError


class _Malformed:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _message(bad: _Malformed) -> str:
    return f"malformed request message: {bad.reason}"


def _guarded(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    parse = handler.request_deserializer

    def deserialize(raw: bytes) -> Any:
        try:
            return parse(raw) if parse is not None else raw
        except DecodeError as exc:
            return _Malformed(str(exc))

    if handler.response_streaming:
        stream = handler.unary_stream

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, _Malformed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(request))
            async for item in stream(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(
            streaming, request_deserializer=deserialize, response_serializer=handler.response_serializer)
    unary = handler.unary_unary

    async def single(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(request))
        return await unary(request, context)

    return grpc.unary_unary_rpc_method_handler(
        single, request_deserializer=deserialize, response_serializer=handler.response_serializer)


class MalformedMessageInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.request_streaming:
            return handler
        return _guarded(handler)
