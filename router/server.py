"""The router process: HTTP (aiohttp) and gRPC (grpc.aio) servers on one asyncio loop, in front of the
engine.

Start: engine.start() (shards connected and warmed up), then both servers listen. Stop (SIGTERM or
SIGINT): gRPC health says NOT_SERVING, the engine drains (new requests get 503 / UNAVAILABLE) for at
most `drain_timeout_s`, then the servers close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
from aiohttp import web
from chameleon_pb import chameleon_pb2, chameleon_pb2_grpc, generation_pb2, generation_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from chameleon.core.adapter_files import base_model_names
from router.api.admin import AdapterAdmin
from router.api.auth import ApiKeyInterceptor, Secret, TlsFiles, api_key_middleware
from router.api.grpc_admin import AdapterAdminServicer
from router.api.grpc_fmaas import FmaasServicer
from router.api.grpc_guard import MalformedMessageInterceptor
from router.api.http_common import MAX_BODY, error_middleware
from router.api.http_openai import OpenAiRoutes
from router.api.http_tgi import TgiRoutes
from router.api.service import ApiService, EngineLike
from router.metrics import RouterMetrics
from router.tokenize import RouterTokenizer
from router.validation import Limits, UnknownAdapter, Validator

log = logging.getLogger("chameleon.router")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    hostname: str = "0.0.0.0"
    port: int = 3000
    grpc_port: int = 8033
    model_name: str = ""  # served name (/info, /v1/models); "" = the engine's model id
    adapter_dir: Path | None = None
    max_request_bytes: int = 2 << 20
    max_stop_sequences: int = 4
    max_top_n_tokens: int = 5
    max_new_tokens_default: int = 100
    max_client_batch_size: int = 128
    unknown_adapter: UnknownAdapter = "error"
    health_interval_s: float = 5.0
    drain_timeout_s: float = 30.0
    api_key: Secret | None = None  # both APIs require it (router/api/auth.py); prints as ***
    tls: TlsFiles | None = None  # TLS / mutual TLS on the gRPC port


def build_service(engine: EngineLike, tokenizer: RouterTokenizer, cfg: ServerConfig) -> ApiService:
    """The API layer over a STARTED engine (its info gives the token limits)."""
    info = engine.info
    if info is None:
        raise RuntimeError("build_service needs a started engine (engine.info is None)")
    name = cfg.model_name or info.model_id
    limits = Limits(
        max_input_tokens=info.max_input_tokens,
        max_total_tokens=info.max_total_tokens,
        max_stop_sequences=cfg.max_stop_sequences,
        max_top_n_tokens=cfg.max_top_n_tokens,
        max_new_tokens_default=cfg.max_new_tokens_default,
        max_client_batch_size=cfg.max_client_batch_size,
        unknown_adapter=cfg.unknown_adapter,
        base_names=base_model_names(name, info.model_id, tokenizer.model_dir.name),
    )
    metrics = RouterMetrics(engine.stats, block_size=lambda: info.block_size, model_name=name)
    observers = getattr(engine, "step_observers", None)  # optional engine hook: per-step timings
    if isinstance(observers, list):
        observers.append(metrics.observe_batch)
    return ApiService(engine, Validator(limits, tokenizer, engine.known), tokenizer, metrics, name)


def build_http_app(service: ApiService, cfg: ServerConfig) -> web.Application:
    checks = [api_key_middleware(cfg.api_key)] if cfg.api_key is not None else []
    app = web.Application(client_max_size=cfg.max_request_bytes, middlewares=[*checks, error_middleware])
    app[MAX_BODY] = cfg.max_request_bytes
    admin = AdapterAdmin(service.engine)
    TgiRoutes(service).register(app)
    OpenAiRoutes(service, admin, cfg.adapter_dir).register(app)
    return app


def build_grpc_server(
    service: ApiService, cfg: ServerConfig
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    server = grpc.aio.server(
        # the key check first: an unauthenticated message is not even parsed
        interceptors=[*([ApiKeyInterceptor(cfg.api_key)] if cfg.api_key is not None else []),
                      MalformedMessageInterceptor()],
        options=[("grpc.max_receive_message_length", cfg.max_request_bytes), ("grpc.so_reuseport", 0)],
    )
    generation_pb2_grpc.add_GenerationServiceServicer_to_server(FmaasServicer(service), server)
    chameleon_pb2_grpc.add_AdapterAdminServicer_to_server(
        AdapterAdminServicer(AdapterAdmin(service.engine)), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (
        generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name,
        chameleon_pb2.DESCRIPTOR.services_by_name["AdapterAdmin"].full_name,
        health.SERVICE_NAME,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    return server, health_servicer


class RouterServer:
    """Both servers and the health watcher over a started engine."""

    def __init__(self, engine: EngineLike, tokenizer: RouterTokenizer, cfg: ServerConfig) -> None:
        self.engine = engine
        self.cfg = cfg
        self.service = build_service(engine, tokenizer, cfg)
        self._runner: web.AppRunner | None = None
        self._grpc: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._watch: asyncio.Task[None] | None = None
        self.http_port = cfg.port  # the bound ports once started (port 0 = any free port)
        self.grpc_port = cfg.grpc_port

    async def start(self) -> None:
        cfg = self.cfg
        self._runner = web.AppRunner(
            build_http_app(self.service, cfg), handler_cancellation=True, access_log=None
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, cfg.hostname, cfg.port).start()
        self.http_port = self._runner.addresses[0][1]
        self._grpc, self._health = build_grpc_server(self.service, cfg)
        address = f"{cfg.hostname}:{cfg.grpc_port}"
        try:
            if cfg.tls is not None:
                self.grpc_port = self._grpc.add_secure_port(address, cfg.tls.server_credentials())
            else:
                self.grpc_port = self._grpc.add_insecure_port(address)
        except RuntimeError as exc:  # grpc raises instead of returning 0 on recent versions
            raise OSError(f"cannot listen on gRPC port {cfg.grpc_port}: {exc}") from exc
        if self.grpc_port == 0:
            raise OSError(f"cannot listen on gRPC port {cfg.grpc_port}")
        await self._grpc.start()
        await self._set_health(True)
        self._watch = asyncio.create_task(self._watch_health(), name="chameleon-router-health")
        log.info(
            "router listening",
            extra={
                "http": f"{cfg.hostname}:{self.http_port}",
                "grpc": f"{cfg.hostname}:{self.grpc_port}",
                "grpc_tls": "off" if cfg.tls is None else "mutual" if cfg.tls.client_ca else "on",
                "api_key": "required" if cfg.api_key is not None else "off",
                "model": self.service.model_name,
            },
        )

    async def _set_health(self, ok: bool) -> None:
        assert self._health is not None  # internal: set in start()
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name):
            await self._health.set(name, status)

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.health_interval_s)
            try:
                ok = await self.engine.health()
            except Exception:
                log.exception("health check failed")
                ok = False
            await self._set_health(ok)

    async def stop(self, stop_engine: bool = True) -> None:
        log.info("router stopping: draining requests", extra={"timeout_s": self.cfg.drain_timeout_s})
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._health is not None:
            await self._set_health(False)
        if stop_engine:
            try:
                await asyncio.wait_for(self.engine.stop(drain=True), self.cfg.drain_timeout_s)
            except asyncio.TimeoutError:
                log.warning("drain timed out; failing the requests left")
                await self.engine.stop(drain=False)
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        if self._runner is not None:
            await self._runner.cleanup()
        log.info("router stopped")


async def serve(engine: EngineLike, tokenizer: RouterTokenizer, cfg: ServerConfig) -> None:
    """Start the engine and the servers; run until SIGTERM/SIGINT; stop gracefully."""
    await engine.start()
    server = RouterServer(engine, tokenizer, cfg)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await server.start()
        await stopping.wait()
    finally:
        await server.stop()
