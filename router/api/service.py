"""What every client API shares: validation with metrics, and the engine's event stream with metrics,
error mapping and cancellation.

Cancellation: `ApiService.events` is an async generator; a consumer that stops iterating (client gone,
gRPC stream cancelled) closes it, which closes the engine's generator: the engine removes the request
from the batch at its next step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Protocol

from router.engine.types import (
    AdapterStatus,
    EngineError,
    EngineInfo,
    Event,
    FinalEvent,
    GenerateRequest,
    PrefillEvent,
    TokenEvent,
)
from router.errors import ApiError, from_engine
from router.metrics import RouterMetrics
from router.params import ClientParams
from router.tokenize import RouterTokenizer
from router.validation import Validated, Validator

log = logging.getLogger("chameleon.router.api")


class AdapterAdminLike(Protocol):
    def list(self) -> Sequence[AdapterStatus]: ...
    async def load(self, adapter_id: str) -> AdapterStatus: ...
    async def unload(self, adapter_id: str) -> bool: ...


class EngineLike(Protocol):
    """The part of router.engine.entry.Engine the client APIs use."""

    info: EngineInfo | None  # None until start()
    admin: AdapterAdminLike

    async def start(self) -> None: ...
    async def stop(self, drain: bool = True) -> None: ...
    def generate(self, req: GenerateRequest) -> AsyncIterator[Event]: ...
    def known(self, adapter_id: str) -> bool: ...
    async def health(self) -> bool: ...
    def stats(self) -> dict[str, Any]: ...


@dataclass(slots=True)
class Outcome:
    """A finished generation, collected."""

    final: FinalEvent
    tokens: list[TokenEvent] = field(default_factory=list)
    prefill: PrefillEvent | None = None


class ApiService:
    def __init__(
        self,
        engine: EngineLike,
        validator: Validator,
        tokenizer: RouterTokenizer,
        metrics: RouterMetrics,
        model_name: str,
    ) -> None:
        self.engine = engine
        self.validator = validator
        self.tokenizer = tokenizer
        self.metrics = metrics
        self.model_name = model_name

    @property
    def info(self) -> EngineInfo:
        """The started engine's facts (the service is only built over a started engine)."""
        if self.engine.info is None:
            raise RuntimeError("the engine is not started")
        return self.engine.info

    def validate(
        self,
        text: str,
        params: ClientParams,
        *,
        stream: bool = False,
        correlation_id: str | None = None,
        api: str = "",
    ) -> Validated:
        """Validate one request, counting it (tgi_request_count) and any refusal."""
        self.metrics.request_started()
        t0 = time.perf_counter()
        try:
            validated = self.validator.validate(text, params, stream=stream, correlation_id=correlation_id)
        except ApiError as exc:
            self.metrics.request_failed(exc.kind)
            log.info(
                "request refused",
                extra={
                    "api": api,
                    "error_type": exc.kind,
                    "reason": exc.message,
                    "correlation_id": correlation_id,
                },
            )
            raise
        self.metrics.validation_done(time.perf_counter() - t0)
        return validated

    def refuse(self, exc: ApiError) -> None:
        """Count a request refused before validation (e.g. malformed body)."""
        self.metrics.request_started()
        self.metrics.request_failed(exc.kind)

    def events(self, v: Validated) -> EventStream:
        """Submit a validated request and return its event stream (EngineError becomes ApiError).

        Submission happens here, not at the first iteration, so an overloaded engine is refused before a
        stream's first byte goes out (HTTP 429 / RESOURCE_EXHAUSTED, not an error inside a stream).
        The caller must `aclose()` the stream (also when it never iterated it): that cancels the request
        in the engine, which frees its slot, KV blocks and adapter reference at the next step."""
        req = v.request
        cid = {"correlation_id": req.correlation_id}
        try:
            source = self.engine.generate(req)
        except EngineError as exc:
            self.metrics.request_failed(exc.kind)
            log.info("request refused", extra={**cid, "error_type": exc.kind, "reason": exc.message})
            raise from_engine(exc) from exc
        log.info("request started", extra={**cid, "adapter_id": req.adapter_id, "max_new_tokens":
                                           req.params.max_new_tokens, "input_tokens": len(req.input_ids)})
        return EventStream(source, self.metrics, cid)

    async def submit_all(self, validated: Sequence[Validated]) -> list[EventStream]:
        """Submit every request or none: when one is refused (e.g. overloaded), the ones already
        submitted are cancelled before the engine's loop could admit any of them (no await runs
        between the submissions), and the refusal is raised."""
        streams: list[EventStream] = []
        try:
            for v in validated:
                streams.append(self.events(v))
        except ApiError:
            await close_all(streams)
            raise
        return streams

    async def run(self, v: Validated) -> Outcome:
        """Generate to the end and collect the events."""
        return await collect(self.events(v))


class EventStream:
    """One request's events, with metrics and error mapping. Ends after its FinalEvent; raises ApiError
    when the engine fails the request. `aclose()` cancels the request in the engine whether or not the
    stream was ever iterated (an async generator that never started could not do that)."""

    __slots__ = ("_cid", "_metrics", "_outcome", "_source", "_start")

    def __init__(self, source: AsyncIterator[Event], metrics: RouterMetrics,
                 cid: dict[str, str | None]) -> None:
        self._source, self._metrics, self._cid = source, metrics, cid
        self._start = time.perf_counter()
        self._outcome: str | None = None  # None while running; then done / failed / cancelled

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        if self._outcome is not None:
            raise StopAsyncIteration
        try:
            event = await anext(self._source)
        except StopAsyncIteration:
            self._end("failed", "incomplete_generation")
            raise ApiError("incomplete_generation", "the generation ended without a final event") from None
        except EngineError as exc:
            self._end("failed", exc.kind)
            log.warning("request failed", extra={**self._cid, "error_type": exc.kind, "reason": exc.message})
            raise from_engine(exc) from exc
        if isinstance(event, FinalEvent):
            self._end("done")
            self._metrics.request_succeeded(event, time.perf_counter() - self._start)
            log.info("request finished", extra={**self._cid, "finish_reason": event.finish_reason,
                                                "generated_tokens": event.generated_tokens})
        return event

    def _end(self, outcome: str, error_kind: str | None = None) -> None:
        self._outcome = outcome
        if error_kind is not None:
            self._metrics.request_failed(error_kind)

    async def aclose(self) -> None:
        if self._outcome is None:
            self._end("cancelled")
            self._metrics.request_cancelled()
            log.info("request cancelled", extra=self._cid)
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None:
            await aclose()


async def close_all(streams: Sequence[EventStream]) -> None:
    for stream in streams:
        await stream.aclose()


async def collect(stream: EventStream) -> Outcome:
    """Read `stream` to its FinalEvent and close it (also when cancelled or failed)."""
    tokens: list[TokenEvent] = []
    prefill: PrefillEvent | None = None
    async with aclosing(stream):
        async for event in stream:
            if isinstance(event, TokenEvent):
                tokens.append(event)
            elif isinstance(event, PrefillEvent):
                prefill = event
            elif isinstance(event, FinalEvent):
                return Outcome(event, tokens, prefill)
    raise ApiError("incomplete_generation", "the generation ended without a final event")
