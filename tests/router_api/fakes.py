"""Test doubles for the router's API unit tests: a scripted engine and a router served in a thread.

The fake engine yields `max_new_tokens` tokens " t0", " t1", ... (ids 100, 101, ...), then a FinalEvent;
it records every request and every cancellation so tests can check what reached the engine.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from router.engine.types import (
    AdapterStatus,
    EngineError,
    EngineInfo,
    Event,
    FinalEvent,
    GenerateRequest,
    PrefillEvent,
    TokenEvent,
    TopToken,
)
from router.server import RouterServer, ServerConfig
from router.tokenize import RouterTokenizer

INFO = EngineInfo(
    model_id="tiny-model",
    model_type="llama",
    dtype="float32",
    device_type="cpu",
    block_size=16,
    world_size=1,
    num_pages=100,
    max_input_tokens=48,
    max_total_tokens=96,
    max_batch_prefill_tokens=256,
    max_concurrent_requests=4,
    max_supported_total_tokens=1600,
    page_bytes=4096,
)
ADAPTERS = ("alpha", "beta")


def token(i: int, top_n: int) -> TokenEvent:
    tops = tuple(TopToken(100 + i + k, f" t{i + k}", -0.5 - k, False) for k in range(top_n))
    return TokenEvent(id=100 + i, text=f" t{i}", logprob=-0.5, special=False, top_tokens=tops)


@dataclass
class Script:
    """How the fake engine behaves for the next requests."""

    fail_after: int | None = None  # raise EngineError("generation") after this many tokens
    final_late: bool = False  # yield the FinalEvent one step after the last token
    hold: asyncio.Event | None = None  # wait for this before each token (set by the test)
    step_s: float = 0.0


@dataclass
class FakeAdapters:
    engine: FakeEngine
    resident: set[str] = field(default_factory=set)
    busy: set[str] = field(default_factory=set)

    def list(self) -> list[AdapterStatus]:
        return [
            AdapterStatus(a, 8, 1000, 2, a in self.resident, 1 if a in self.busy else 0, ("q_proj",), 16.0)
            for a in ADAPTERS
        ]

    async def load(self, adapter_id: str) -> AdapterStatus:
        self.resident.add(adapter_id)
        return next(s for s in self.list() if s.adapter_id == adapter_id)

    async def unload(self, adapter_id: str) -> bool:
        if adapter_id in self.busy:
            raise EngineError("validation", f"adapter {adapter_id!r} is in use by 1 running requests")
        was = adapter_id in self.resident
        self.resident.discard(adapter_id)
        return was


class FakeEngine:
    def __init__(self, info: EngineInfo = INFO) -> None:
        self.info: EngineInfo | None = info
        self.admin = FakeAdapters(self)
        self.requests: list[GenerateRequest] = []
        self.cancelled: list[GenerateRequest] = []
        self.finished: list[GenerateRequest] = []
        self.in_flight = 0
        self.script = Script()
        self.healthy = True
        self.stats_value: dict[str, Any] = {}
        self.step_observers: list[Callable[[str, float, float], None]] = []

    async def start(self) -> None:
        return None

    async def stop(self, drain: bool = True) -> None:
        return None

    def known(self, adapter_id: str) -> bool:
        return adapter_id in ADAPTERS

    async def health(self) -> bool:
        return self.healthy

    def stats(self) -> dict[str, Any]:
        return self.stats_value

    def generate(self, req: GenerateRequest) -> AsyncIterator[Event]:
        assert self.info is not None
        if self.in_flight >= self.info.max_concurrent_requests:
            raise EngineError(
                "overloaded",
                f"{self.in_flight} requests in flight, the maximum is {self.info.max_concurrent_requests}",
            )
        self.requests.append(req)
        return self._run(req, replace(self.script))

    async def _run(self, req: GenerateRequest, script: Script) -> AsyncIterator[Event]:
        self.in_flight += 1
        done = False
        try:
            p = req.params
            if p.prefill_logprobs:
                yield PrefillEvent(tuple(TopToken(i, f"p{i}", -1.0, False) for i in req.input_ids))
            text, n, reason = "", 0, "length"
            for i in range(p.max_new_tokens):
                if script.hold is not None:
                    await script.hold.wait()
                await asyncio.sleep(script.step_s)
                if script.fail_after is not None and i >= script.fail_after:
                    raise EngineError("generation", "shard rank 0 failed: boom")
                for observe in self.step_observers:
                    observe("prefill" if i == 0 else "decode", 0.002, 0.001)
                ev = token(i, p.top_n_tokens)
                text, n = text + ev.text, n + 1
                yield ev
                if any(text.endswith(s) for s in p.stop_sequences):
                    reason = "stop_sequence"
                    break
            if script.final_late:
                await asyncio.sleep(0.01)
            done = True
            self.finished.append(req)
            seed = p.seed if p.seed is not None else 7
            yield FinalEvent(text, n, reason, seed, len(req.input_ids), 0.001, 0.002)  # type: ignore[arg-type]
        finally:
            self.in_flight -= 1
            if not done:
                self.cancelled.append(req)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServedRouter:
    """A RouterServer over a FakeEngine on its own event loop thread, on free ports."""

    def __init__(self, engine: FakeEngine, model_dir: Path, **cfg: Any) -> None:
        self.engine = engine
        self.loop = asyncio.new_event_loop()
        config = ServerConfig(hostname="127.0.0.1", port=0, grpc_port=0, health_interval_s=0.2, **cfg)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server = self.call(lambda: _make(engine, model_dir, config))
        self.http = f"http://127.0.0.1:{self.server.http_port}"
        self.grpc = f"127.0.0.1:{self.server.grpc_port}"

    def call(self, factory: Callable[[], Any]) -> Any:
        """Run a coroutine made by `factory` on the server loop and wait for its result."""

        async def run() -> Any:
            return await factory()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def close(self) -> None:
        self.call(lambda: self.server.stop(stop_engine=False))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


async def _make(engine: FakeEngine, model_dir: Path, cfg: ServerConfig) -> RouterServer:
    server = RouterServer(engine, RouterTokenizer(model_dir), cfg)
    await server.start()
    return server
