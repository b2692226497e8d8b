"""Chameleon on Ray Serve: N replicas, each one router + its shard group, behind one HTTP endpoint.

  Ray HTTP proxy ─> Ingress (1 small replica) ─handle, multiplexed_model_id = adapter─> ChameleonReplica × N
                                                    (request router: chameleon/scale/ray_router.py)

- `ChameleonReplica` runs `chameleon launch` on local ports (replica_proc.py) and proxies HTTP to it,
  streaming the answer back chunk by chunk; `record_routing_stats` reports its router's figures
  (replica_stats.py) every `stats_period_s`; `check_health` fails only when the launcher exited (it
  restarts a failed shard group itself; meanwhile the replica reports `healthy: false`).
- `Ingress` reads the adapter of a request (TGI `parameters.adapter_id`, OpenAI `model`, or Ray's
  multiplexed-model-id header) and sends it to a replica with that adapter as the multiplexed model id.
  An answer refused before any byte of output (503 from a recovering replica, a failed non-streaming
  generation, a replica that cannot be reached) is retried on another replica.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from chameleon.core.affinity import DEFAULT_MISS_WEIGHT
from chameleon.scale.prompt_size import json_object
from chameleon.scale.ray_router import AdapterAffinityRequestRouter
from chameleon.scale.replica_proc import GroupSpec, LaunchedGroup
from chameleon.scale.replica_stats import CostMeter, routing_stats, unhealthy_stats, view_from_metrics

# not copied from one hop to the next (the next server sets its own)
HOP_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "host", "date",
                         "server"})
REPLICA_HEADER = "x-chameleon-replica"
TGI_ROUTES = frozenset({"/", "/generate", "/generate_stream"})
OPENAI_ROUTES = frozenset({"/v1/completions", "/v1/chat/completions"})


@dataclass(frozen=True, slots=True)
class RayServeConfig:
    group: GroupSpec
    replicas: int = 2
    routing: str = "affinity"  # or "default": Ray Serve's own router (power of two choices)
    cpus_per_rank: float = 1.0
    gpus_per_rank: float = 0.0
    max_ongoing_requests: int = 128
    stats_period_s: float = 1.0
    load_factor: float = 1.25
    load_slack: int = 4
    miss_weight: float = DEFAULT_MISS_WEIGHT
    workdir: str = "/tmp/chameleon-ray"
    base_names: tuple[str, ...] = ()  # OpenAI `model` values that mean the base model


def adapter_of(path: str, body: bytes, base_names: Sequence[str]) -> str | None:
    """The adapter a request asks for (None: base model, or not a generation request)."""
    if path not in TGI_ROUTES and path not in OPENAI_ROUTES:
        return None
    doc = json_object(body)
    if doc is None:
        return None
    if path in OPENAI_ROUTES:
        model = doc.get("model")
        return model if isinstance(model, str) and model and model not in base_names else None
    params = doc.get("parameters")
    adapter = params.get("adapter_id") if isinstance(params, dict) else None
    return adapter if isinstance(adapter, str) and adapter else None


def is_streaming(path: str, body: bytes) -> bool:
    """A streamed answer (SSE): its errors arrive after the status line, so it is never retried."""
    if path.startswith("/generate_stream"):
        return True
    doc = json_object(body)
    return doc is not None and doc.get("stream") is True


class ChameleonReplica:
    def __init__(self, group: GroupSpec, workdir: str) -> None:
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.group = LaunchedGroup(group, Path(workdir) / self.replica_id)
        self.group.start()
        self.group.wait_healthy()
        self._session: aiohttp.ClientSession | None = None
        self._last: dict[str, Any] = {}
        self._meter = CostMeter()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        return self._session

    async def record_routing_stats(self) -> dict[str, Any]:
        """A new report; the last one again (same `ts`: routers ignore it) when the router is merely
        slow to answer on a busy machine, `healthy: false` when it refuses or says so."""
        ts, limit = time.time(), aiohttp.ClientTimeout(total=4)
        try:
            async with self._client().get(self.group.url + "/health", timeout=limit) as reply:
                healthy = reply.status == 200
            async with self._client().get(self.group.url + "/metrics", timeout=limit) as reply:
                text = await reply.text()
            self._last = routing_stats(view_from_metrics(self.replica_id, text, self._meter, ts), healthy, ts)
        except asyncio.TimeoutError:
            pass
        except (aiohttp.ClientError, ValueError):
            self._last = unhealthy_stats(ts)
        return self._last

    def check_health(self) -> None:
        proc = self.group.proc
        if proc is None or proc.poll() is not None:
            raise RuntimeError("the replica's chameleon launch exited")

    def info(self) -> dict[str, Any]:
        proc = self.group.proc
        return {"replica": self.replica_id, "url": self.group.url, "workdir": str(self.group.workdir),
                "launcher_pid": proc.pid if proc is not None else None}

    async def proxy(self, method: str, path: str, headers: dict[str, str],
                    body: bytes) -> AsyncIterator[dict[str, Any] | bytes]:
        """First item: {"status", "headers", "retry"}; then the body's chunks as they come."""
        streaming = is_streaming(path, body)
        try:
            async with self._client().request(method, self.group.url + path, headers=headers,
                                              data=body) as reply:
                retry = reply.status == 503 or (reply.status == 424 and not streaming)
                out = {k: v for k, v in reply.headers.items() if k.lower() not in HOP_HEADERS}
                yield {"status": reply.status, "headers": {**out, REPLICA_HEADER: self.replica_id},
                       "retry": retry}
                async for chunk in reply.content.iter_any():
                    yield chunk
        except aiohttp.ClientConnectionError as exc:
            error = {"error": f"replica {self.replica_id} unreachable: {exc}", "error_type": "unavailable"}
            head = {"content-type": "application/json", REPLICA_HEADER: self.replica_id}
            yield {"status": 503, "headers": head, "retry": True}
            yield json.dumps(error).encode()

    def __del__(self) -> None:
        self.group.stop()


class Ingress:
    def __init__(self, backend: DeploymentHandle, base_names: Sequence[str], retries: int = 4) -> None:
        self.backend, self.base_names, self.retries = backend, tuple(base_names), retries

    async def __call__(self, request: Request) -> Response:
        body = await request.body()
        adapter = serve.get_multiplexed_model_id() or adapter_of(request.url.path, body, self.base_names)
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        handle = self.backend.options(stream=True)
        if adapter:
            handle = handle.options(multiplexed_model_id=adapter)
        attempt = 0
        while True:
            gen = handle.proxy.remote(request.method, path, headers, body)
            head = await gen.__anext__()
            if not head["retry"] or attempt >= self.retries:
                return StreamingResponse(_rest(gen), status_code=head["status"], headers=head["headers"])
            gen.cancel()
            attempt += 1
            await asyncio.sleep(0.5 * attempt)  # meanwhile the replica's next report marks it unhealthy


async def _rest(gen: Any) -> AsyncIterator[bytes]:
    async for chunk in gen:
        yield chunk


def build_app(cfg: RayServeConfig) -> Any:
    """The Ray Serve application (Ingress bound to N ChameleonReplica)."""
    k = cfg.group.num_shard
    resources: dict[str, Any] = {"num_cpus": cfg.cpus_per_rank * k}
    if cfg.gpus_per_rank:
        resources["num_gpus"] = cfg.gpus_per_rank * k
    options: dict[str, Any] = {
        "name": "chameleon", "num_replicas": cfg.replicas, "ray_actor_options": resources,
        "max_ongoing_requests": cfg.max_ongoing_requests, "health_check_period_s": 10.0,
        "health_check_timeout_s": 60.0, "graceful_shutdown_timeout_s": 60.0,
    }
    if cfg.routing == "affinity":
        options["request_router_config"] = RequestRouterConfig(
            request_router_class=AdapterAffinityRequestRouter,
            request_router_kwargs={"load_factor": cfg.load_factor, "load_slack": cfg.load_slack,
                                   "miss_weight": cfg.miss_weight},
            request_routing_stats_period_s=cfg.stats_period_s, request_routing_stats_timeout_s=5.0)
    elif cfg.routing != "default":
        raise ValueError(f"routing must be 'affinity' or 'default', got {cfg.routing!r}")
    replica = serve.deployment(ChameleonReplica).options(**options)
    ingress = serve.deployment(Ingress).options(
        name="ingress", num_replicas=1, ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=10 * cfg.max_ongoing_requests * cfg.replicas)
    return ingress.bind(replica.bind(cfg.group, cfg.workdir), cfg.base_names)
