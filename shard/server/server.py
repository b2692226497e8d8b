"""The shard's gRPC server on `unix://{uds_path}-{rank}`: generate.v3 + chameleon.v1.AdapterService
(or generate.v3 alone, see plain_v3.py), reflection on, errors turned into statuses, graceful shutdown
on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import os
import signal
import threading
from concurrent import futures

import grpc
from chameleon_pb import chameleon_pb2, chameleon_pb2_grpc, generate_pb2, generate_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shard.server.adapter_service import AdapterService
from shard.server.interceptor import ErrorInterceptor
from shard.server.plain_v3 import StripExtensions
from shard.server.servicer import ShardCore, TextGenerationService

log = logging.getLogger("shard.server")
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def socket_path(uds_path: str, rank: int) -> str:
    return f"{uds_path}-{rank}"


def build_server(core: ShardCore, workers: int = 4,
                 protocol: str = "chameleon.v1") -> tuple[grpc.Server, str]:
    """A started-to-be server bound to this rank's socket (stale socket files are removed).
    `protocol` "generate.v3": no AdapterService and no extension fields in replies (plain_v3.py)."""
    v3_only = protocol == "generate.v3"
    path = socket_path(core.options.uds_path, core.rank)
    if os.path.exists(path):
        os.unlink(path)
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
    interceptors = [ErrorInterceptor(), *([StripExtensions()] if v3_only else [])]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         interceptors=interceptors, options=options)
    generate_pb2_grpc.add_TextGenerationServiceServicer_to_server(
        TextGenerationService(core, refuse_per_request=not v3_only), server)
    names = [generate_pb2.DESCRIPTOR.services_by_name["TextGenerationService"].full_name,
             reflection.SERVICE_NAME]
    if not v3_only:
        chameleon_pb2_grpc.add_AdapterServiceServicer_to_server(AdapterService(core), server)
        names.append(chameleon_pb2.DESCRIPTOR.services_by_name["AdapterService"].full_name)
    reflection.enable_server_reflection(names, server)
    server.add_insecure_port(f"unix://{path}")
    return server, path


def serve(core: ShardCore, grace_s: float = 5.0, protocol: str = "chameleon.v1") -> None:
    """Serve until SIGTERM/SIGINT, then stop accepting calls and let running ones finish."""
    server, path = build_server(core, protocol=protocol)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    log.info("shard serving", extra={"socket": f"unix://{path}", "rank": core.rank, "world": core.world,
                                     "protocol": protocol})
    stop.wait()
    log.info("shard shutting down", extra={"rank": core.rank})
    server.stop(grace_s).wait()
    if os.path.exists(path):
        os.unlink(path)
