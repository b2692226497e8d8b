"""`chameleon shard --protocol generate.v3`: serve only TGI generate.v3, as an unmodified TGI
`text-generation-server` does (for testing, and for routers that speak only v3).

In that mode the server registers no chameleon.v1.AdapterService (its calls answer UNIMPLEMENTED) and
`StripExtensions` clears Chameleon's own fields (numbers >= 100: ShardInfo in Info, the pool layout in
Warmup, the headroom in Prefill/Decode/FilterBatch) from every reply, so a router sees exactly what a
TGI shard sends. Adapters named in requests are loaded by the shard itself (`ShardCore.prepare`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

PROTOCOLS = ("chameleon.v1", "generate.v3")
FIRST_EXTENSION_FIELD = 100


def strip_extensions(message: Any) -> Any:
    """Clear the message's fields numbered >= 100 (Chameleon's additions to generate.v3); returns it."""
    for f in message.DESCRIPTOR.fields:
        if f.number >= FIRST_EXTENSION_FIELD:
            message.ClearField(f.name)
    return message


class StripExtensions(grpc.ServerInterceptor):
    """Replies of unary RPCs leave without Chameleon's extension fields."""

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        def stripped(request: Any, context: grpc.ServicerContext) -> Any:
            return strip_extensions(inner(request, context))

        return grpc.unary_unary_rpc_method_handler(
            stripped, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
