"""Exceptions become gRPC statuses with readable messages; a failed call never takes the server down.

Bad input (ValueError, which includes AdapterError) -> INVALID_ARGUMENT; out of memory ->
RESOURCE_EXHAUSTED; anything else -> INTERNAL with `Type: message`. A TGI router treats any error as
a failed batch: it clears the batch and fails its requests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
import torch

log = logging.getLogger("shard.server")


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, torch.OutOfMemoryError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"out of memory: {exc}"
    if isinstance(exc, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    return grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"


class ErrorInterceptor(grpc.ServerInterceptor):
    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        method = handler_call_details.method

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return inner(request, context)
            except Exception as exc:  # every failure becomes a status; the server keeps serving
                code, message = status_for(exc)
                level = logging.WARNING if code == grpc.StatusCode.INVALID_ARGUMENT else logging.ERROR
                log.log(level, "%s failed: %s", method, message, exc_info=code == grpc.StatusCode.INTERNAL)
            context.abort(code, message)

        return grpc.unary_unary_rpc_method_handler(
            guarded, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
