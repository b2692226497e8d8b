"""TGI's HTTP routes: POST / /generate /generate_stream /tokenize, GET /info /health /metrics."""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from chameleon import __version__
from router.api.http_common import correlation_id, read_json
from router.api.service import ApiService
from router.api.sse import Lookahead, event, open_stream
from router.api.tgi_format import generate_json, stream_json, timing_headers
from router.engine.types import FinalEvent, TokenEvent
from router.errors import ApiError, ValidationError
from router.metrics import CONTENT_TYPE
from router.params import ClientParams, from_tgi
from router.validation import Validated

_CLIENT_GONE = (ConnectionResetError, ConnectionError)
log = logging.getLogger("chameleon.router.http")


class TgiRoutes:
    def __init__(self, service: ApiService) -> None:
        self.s = service

    def register(self, app: web.Application) -> None:
        app.router.add_post("/", self.compat_generate)
        app.router.add_post("/generate", self.generate)
        app.router.add_post("/generate_stream", self.generate_stream)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_get("/info", self.info)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)

    async def _read(self, request: web.Request) -> tuple[dict[str, Any], str, ClientParams]:
        try:
            body = await read_json(request)
            inputs = body.get("inputs")
            if not isinstance(inputs, str):
                raise ValidationError("`inputs` must be a string")
            return body, inputs, from_tgi(body.get("parameters"))
        except ApiError as exc:
            self.s.refuse(exc)
            raise

    async def compat_generate(self, request: web.Request) -> web.StreamResponse:
        """POST /: a JSON list with one answer, or SSE when `stream` is true."""
        body, inputs, params = await self._read(request)
        if body.get("stream") is True:
            return await self._stream(request, inputs, params)
        resp = await self._generate(request, inputs, params)
        return web.json_response([resp[0]], headers=resp[1])

    async def generate(self, request: web.Request) -> web.StreamResponse:
        _, inputs, params = await self._read(request)
        body, headers = await self._generate(request, inputs, params)
        return web.json_response(body, headers=headers)

    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        _, inputs, params = await self._read(request)
        return await self._stream(request, inputs, params)

    async def _generate(
        self, request: web.Request, inputs: str, params: ClientParams
    ) -> tuple[dict[str, Any], dict[str, str]]:
        t0 = time.perf_counter()
        v = self.s.validate(inputs, params, correlation_id=correlation_id(request), api="http")
        t_valid = time.perf_counter() - t0
        out = await self.s.run(v)
        body = generate_json(
            out,
            prompt=inputs,
            details=params.details,
            return_full_text=params.return_full_text,
            top_n_tokens=v.request.params.top_n_tokens,
        )
        headers = timing_headers(out.final, t_valid, time.perf_counter() - t0, len(v.request.input_ids))
        return body, headers

    async def _stream(self, request: web.Request, inputs: str, params: ClientParams) -> web.StreamResponse:
        v = self.s.validate(inputs, params, stream=True, correlation_id=correlation_id(request), api="http")
        events = Lookahead(self.s.events(v))  # refused here (429) before the stream opens
        try:
            resp = await open_stream(request)
            try:
                await self._pump_tokens(resp, events, v, inputs, params)
            except ApiError as exc:
                await resp.write(event(exc.body()))
            await resp.write_eof()
        except _CLIENT_GONE:
            log.info("client gone", extra={"correlation_id": v.request.correlation_id})
        finally:
            await events.aclose()
        return resp

    async def _pump_tokens(
        self,
        resp: web.StreamResponse,
        events: Lookahead[Any],
        v: Validated,
        inputs: str,
        params: ClientParams,
    ) -> None:
        """Write one event per token; the last token's event carries generated_text and details."""
        index, last, carry = 0, None, None
        top_n, full = v.request.params.top_n_tokens, params.return_full_text
        while True:
            ev, carry = (carry if carry is not None else await events.next()), None
            if ev is None:
                return
            if isinstance(ev, TokenEvent):
                index, last = index + 1, ev
                nxt = await events.ready()
                final = nxt if isinstance(nxt, FinalEvent) else None
                carry = nxt if final is None else None
                await resp.write(
                    event(
                        stream_json(
                            index, ev, final, prompt=inputs, return_full_text=full, top_n_tokens=top_n
                        )
                    )
                )
            elif isinstance(ev, FinalEvent):
                # The final event came a step after the last token: close with an empty special token.
                tail = TokenEvent(id=last.id if last else 0, text="", logprob=0.0, special=True)
                await resp.write(
                    event(
                        stream_json(index + 1, tail, ev, prompt=inputs, return_full_text=full, top_n_tokens=0)
                    )
                )

    async def tokenize(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        inputs = body.get("inputs")
        if not isinstance(inputs, str) or not inputs:
            raise ValidationError("`inputs` must be a non-empty string")
        enc = self.s.tokenizer.encode(inputs)
        return web.json_response(
            [
                {"id": i, "text": inputs[a:b], "start": a, "stop": b}
                for i, (a, b) in zip(enc.ids, enc.offsets, strict=True)
            ]
        )

    async def info(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(info_json(self.s))

    async def health(self, request: web.Request) -> web.StreamResponse:
        if await self.s.engine.health():
            return web.json_response({"status": "ok"})
        return web.json_response({"error": "unhealthy", "error_type": "healthcheck"}, status=503)

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self.s.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


def info_json(s: ApiService) -> dict[str, Any]:
    info, limits = s.info, s.validator.limits
    return {
        "model_id": s.model_name,
        "model_sha": None,
        "model_dtype": info.dtype,
        "model_device_type": info.device_type,
        "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": info.max_concurrent_requests,
        "max_best_of": limits.max_best_of,
        "max_stop_sequences": limits.max_stop_sequences,
        "max_input_tokens": limits.max_input_tokens,
        "max_input_length": limits.max_input_tokens,
        "max_total_tokens": limits.max_total_tokens,
        "max_top_n_tokens": limits.max_top_n_tokens,
        "max_batch_prefill_tokens": info.max_batch_prefill_tokens,
        "max_batch_total_tokens": info.max_supported_total_tokens,
        "validation_workers": 1,
        "max_client_batch_size": 4,
        "router": "chameleon-router",
        "version": __version__,
        "sha": None,
        "docker_label": None,
        "block_size": info.block_size,
        "num_shard": info.world_size,
        "shard_protocol": info.shard_protocol,
        "warnings": list(info.warnings),
        "memory_headroom": getattr(info, "memory_headroom", "off"),
    }
