"""`Engine`: the facade router/api talks to (see router/engine/types.py for the seam).

    engine = Engine(EngineConfig(master_shard_uds_path=..., model_dir=Path(...), ...))
    await engine.start()          # connect, probe the protocol, ClearCache, Info, Warmup, adapter scan, loop
    async for ev in engine.generate(req): ...
    await engine.stop(drain=True)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from chameleon.core.adapters import AdapterSpec
from chameleon.core.memory import ModelShape
from chameleon.core.request import Request
from chameleon.core.sched import Scheduler
from router.engine.adapter_admin import AdapterAdminOps
from router.engine.adapter_registry import AdapterNotFound, AdapterRegistry
from router.engine.config import EngineConfig
from router.engine.live import Live
from router.engine.loop import ServingLoop
from router.engine.policies import Policies
from router.engine.protocol import GENERATE_V3, protocol_warnings
from router.engine.recovery import RecoveryResult, recover
from router.engine.residency_v3 import make_residency
from router.engine.shard_client import ShardClient, ShardError
from router.engine.startup import StartupError, adopt_shard_adapters, start_shards
from router.engine.stats import engine_stats
from router.engine.types import EngineError, EngineInfo, Event, GenerateRequest

log = logging.getLogger("router.engine")


class Engine:
    """Owns the shard client and the serving loop task. Not usable before `start()`."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.info: EngineInfo | None = None
        self.client: ShardClient | None = None
        self.registry: AdapterRegistry | None = None
        self.loop: ServingLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._specs: dict[str, AdapterSpec] = {}
        self._ids = 0
        self._rng = random.Random(config.seed)
        self._accepting = False
        self.admin = AdapterAdminOps(self)
        # Per-step timing hooks (method, inference_s, forward_s); the router's metrics subscribe.
        self.step_observers: list[Callable[[str, float, float], None]] = []

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect to every rank, probe its protocol, ClearCache, Info, Warmup; size the pool; start the
        loop. Shards without chameleon.v1 are served in v3-only mode (router/engine/protocol.py)."""
        cfg = self.config
        try:
            self.client = await ShardClient.connect(cfg.master_shard_uds_path, wait_s=cfg.connect_timeout_s)
            protocol = await self.client.probe_protocol()
            facts = await start_shards(self.client, cfg)
        except (ShardError, StartupError) as exc:
            if self.client is not None:
                await self.client.close()
            raise StartupError(f"cannot start the shards: {exc}") from exc
        info = facts.info
        if not info.model_id:
            info = _with_model_id(info, cfg.model_dir.name)
        self.info = info = replace(info, shard_protocol=protocol, warnings=protocol_warnings(protocol))
        for warning in info.warnings:
            log.warning("%s", warning, extra={"event": "shard_protocol", "shard_protocol": protocol})
        shape = ModelShape.from_model_dir(cfg.model_dir)
        self.registry = AdapterRegistry(shape, facts.dtype_bytes, info.block_size, info.world_size,
                                        cfg.adapter_dir, model_dtype=facts.info.dtype.removeprefix("torch."),
                                        adapter_policy=facts.adapter_dtype)
        self.registry.scan()
        if not self._v3_only:
            await adopt_shard_adapters(self.client, self.registry)
        self._start_loop(cfg.scheduler, cfg.adapter_cache)
        self._accepting = True

    def _start_loop(self, scheduler: str, cache: str, make: Callable[[], Scheduler] | None = None) -> None:
        assert self.info is not None and self.client is not None  # internal: called after start-up
        cfg = self.config
        policies = Policies(scheduler, "none" if self._v3_only else cache,  # v3-only: no router-side cache
                            self.info.block_size, self._spec, cfg.max_batch_prefill_tokens,
                            cfg.max_batch_size, make, mlq=cfg.mlq)
        self.loop = ServingLoop(self.client, policies, self.info.num_pages,
                                make_residency(self.info.shard_protocol, self.client), recover=self._recover,
                                recovery_timeout_s=cfg.recovery_timeout_s,
                                on_adapter_refused=self._forget_adapter, step_observers=self.step_observers,
                                memory_headroom=None if self._v3_only else cfg.memory_headroom)
        self._task = asyncio.create_task(self.loop.run(), name="chameleon-serving-loop")

    async def _recover(self) -> RecoveryResult | None:
        """One recovery attempt for the loop; keeps the restarted shards' facts."""
        if self.info is None or self.registry is None:
            return None
        result = await recover(self.config, self.info, self.registry)
        if result is not None and result.info is not None:
            self.info = result.info
        return result

    async def switch_policies(self, scheduler: str, adapter_cache: str, *,
                              make_scheduler: Callable[[], Scheduler] | None = None) -> None:
        """Serve on with other policies (same shards, same pool; no new Warmup). Waits until no request
        is in flight, offloads every resident adapter, then starts a fresh loop. For experiments;
        `make_scheduler` builds a scheduler of the caller's instead of `scheduler` by name."""
        old, task = self.loop, self._task
        if old is None or task is None:
            raise EngineError("unavailable", "the engine is not started")
        self._accepting = False
        while old.in_flight:
            await asyncio.sleep(0.01)
        old.stop()
        await task
        await old.release_shards()
        self._start_loop(scheduler, adapter_cache, make_scheduler)
        self._accepting = True

    @property
    def _v3_only(self) -> bool:
        return self.info is not None and self.info.shard_protocol == GENERATE_V3

    async def stop(self, drain: bool = True) -> None:
        """Stop accepting; with `drain` let every request finish, else fail them (unavailable)."""
        self._accepting = False
        if self.loop is not None:
            if drain:
                while self.loop.in_flight and self._task is not None and not self._task.done():
                    await asyncio.sleep(0.01)
            self.loop.fail_all(EngineError("unavailable", "the router is shutting down"))
            self.loop.stop()
        if self._task is not None:
            await self._task
            self._task = None
        if self.client is not None:
            await self.client.close()

    # --- generation -----------------------------------------------------------------------------
    def generate(self, req: GenerateRequest) -> AsyncIterator[Event]:
        """Queue the request and return its event stream. Raises EngineError at once when the engine
        is not serving (unavailable), full (overloaded) or the request cannot ever fit (validation)."""
        loop = self._serving()
        if loop.in_flight >= self.config.max_concurrent_requests:
            raise EngineError("overloaded", f"{loop.in_flight} requests in flight, the maximum is "
                                            f"{self.config.max_concurrent_requests}; retry later")
        self._check_fits(req)
        now = time.monotonic()
        self._ids += 1
        core = Request(id=self._ids, adapter_id=req.adapter_id, input_tokens=len(req.input_ids),
                       max_new_tokens=req.params.max_new_tokens, arrival=now)
        seed = req.params.seed if req.params.seed is not None else self._rng.getrandbits(63)
        live = Live(core, req, seed, now)
        loop.submit(live, now)
        return _EventStream(loop, live)

    def _serving(self) -> ServingLoop:
        if not self._accepting or self.loop is None:
            raise EngineError("unavailable", "the engine is not serving (starting or shutting down)")
        if not self.loop.healthy:
            raise EngineError("unavailable", f"the shards are recovering from a failure "
                                             f"({self.loop.last_error}); retry shortly")
        return self.loop

    def _check_fits(self, req: GenerateRequest) -> None:
        info = self.info
        assert info is not None  # set by start(), which _serving() checked
        n_in, n_new = len(req.input_ids), req.params.max_new_tokens
        if n_in < 1 or n_new < 1:
            raise EngineError("validation", "a request needs an input token and max_new_tokens >= 1")
        if n_in + n_new > info.max_total_tokens:
            raise EngineError("validation", f"input ({n_in}) + max_new_tokens ({n_new}) exceeds the maximum "
                                            f"total of {info.max_total_tokens} tokens")
        pages = -(-(n_in + n_new) // info.block_size)
        if req.adapter_id is not None:
            pages += self.adapter_spec(req.adapter_id).pages
        if pages > info.num_pages - 1:
            raise EngineError("validation", f"the request needs {pages} memory pages with its adapter, the "
                                            f"pool has {info.num_pages - 1}; shorten it")

    def adapter_spec(self, adapter_id: str) -> AdapterSpec:
        """The adapter's size facts; EngineError validation when it is unknown or unreadable."""
        try:
            return self._spec(adapter_id)
        except AdapterNotFound as exc:
            raise EngineError("validation", str(exc)) from exc
        except ValueError as exc:
            raise EngineError("validation", f"adapter {adapter_id!r} cannot be loaded: {exc}") from exc

    def _spec(self, adapter_id: str) -> AdapterSpec:
        spec = self._specs.get(adapter_id)
        if spec is None:
            assert self.registry is not None  # set by start()
            m = self.registry.get(adapter_id)
            pages = 0 if self._v3_only else m.pages  # v3-only: the shards hold adapters in their own memory
            spec = self._specs[adapter_id] = AdapterSpec(adapter_id, m.rank, m.nbytes, pages)
        return spec

    def known(self, adapter_id: str) -> bool:
        return self.registry is not None and self.registry.known(adapter_id)

    def _forget_adapter(self, adapter_id: str) -> None:
        """Drop a folder adapter's cached size facts (re-read from its folder on next use)."""
        if self.registry is not None and self.registry.forget_folder(adapter_id):
            self._specs.pop(adapter_id, None)

    # --- health and metrics ---------------------------------------------------------------------
    async def health(self) -> bool:
        """Health RPC between two loop steps while healthy. After a failure the loop itself retries
        recovery (reconnect, re-warm if the shards restarted, liveness Prefill) about twice a second;
        until that succeeds this answers False without touching the shards."""
        loop = self.loop
        if loop is None or self._task is None or self._task.done() or not loop.healthy:
            return False
        return bool(await loop.check_health())

    def stats(self) -> dict[str, Any]:
        """Scheduler, cache, pool and headroom figures for /metrics (see router/engine/stats.py)."""
        if self.loop is None or self.info is None:
            return {}
        return engine_stats(self.loop.stats(), self.info)


class _EventStream:
    """Async iterator over one request's events. Leaving early (aclose, a cancelled consumer task,
    or dropping the iterator) cancels the request at the next engine step."""

    __slots__ = ("_live", "_loop")

    def __init__(self, loop: ServingLoop, live: Live) -> None:
        self._loop, self._live = loop, live

    def __aiter__(self) -> _EventStream:
        return self

    async def __anext__(self) -> Event:
        try:
            ev = await self._live.stream.get()
        except asyncio.CancelledError:
            self._loop.cancel(self._live.rid)
            raise
        if ev is None:
            raise StopAsyncIteration
        return ev

    async def aclose(self) -> None:
        self._loop.cancel(self._live.rid)

    def __del__(self) -> None:
        if not self._live.stream.done:
            with contextlib.suppress(RuntimeError):  # the event loop may already be closed
                self._loop.cancel(self._live.rid)


def _with_model_id(info: EngineInfo, model_id: str) -> EngineInfo:
    return replace(info, model_id=model_id)
