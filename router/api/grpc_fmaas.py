"""fmaas.GenerationService on grpc.aio: Generate, GenerateStream, Tokenize, ModelInfo (spec/tgis-fmaas.md).

A cancelled GenerateStream cancels this coroutine; closing the event stream tells the engine, which
drops the request at its next step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
from chameleon_pb import generation_pb2 as pb
from chameleon_pb import generation_pb2_grpc as pb_grpc

from router.api.fmaas_params import STOP_REASON, ResponseShape, from_fmaas, stop_sequence_of, token_info
from router.api.fmaas_stream import StreamMessages
from router.api.service import ApiService, EventStream, Outcome, close_all, collect
from router.engine.types import FinalEvent, PrefillEvent, TokenEvent
from router.errors import ApiError, ValidationError
from router.validation import Validated

GRPC_CODE: dict[str, grpc.StatusCode] = {
    "validation": grpc.StatusCode.INVALID_ARGUMENT,
    "overloaded": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "generation": grpc.StatusCode.INTERNAL,
    "incomplete_generation": grpc.StatusCode.INTERNAL,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "conflict": grpc.StatusCode.FAILED_PRECONDITION,
}


def correlation_id(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "x-correlation-id" and isinstance(value, str):
            return value[:128]
    return None


async def abort(context: grpc.aio.ServicerContext, exc: ApiError) -> None:
    await context.abort(GRPC_CODE[exc.kind], exc.message)


def _adapter(
    req: pb.SingleGenerationRequest | pb.BatchedGenerationRequest | pb.BatchedTokenizeRequest,
) -> str | None:
    if req.HasField("adapter_id"):
        return req.adapter_id
    return req.prefix_id if req.HasField("prefix_id") else None


class FmaasServicer(pb_grpc.GenerationServiceServicer):
    def __init__(self, service: ApiService) -> None:
        self.s = service

    async def Generate(
        self, request: pb.BatchedGenerationRequest, context: grpc.aio.ServicerContext
    ) -> pb.BatchedGenerationResponse:
        """A batched call is all-or-nothing for resources: its size is checked first, then every
        sub-request is validated, then all are submitted or none; when the call fails, is cancelled or
        its client goes away, every sub-request it submitted is cancelled (slots, KV blocks and adapter
        references are freed at the engine's next step)."""
        cid = correlation_id(context)
        try:
            self._check_batch_size(len(request.requests))
            params, shape = from_fmaas(request.params, _adapter(request))
            validated = [
                self.s.validate(r.text, params, correlation_id=cid, api="grpc") for r in request.requests
            ]
            streams = await self.s.submit_all(validated)
            tasks = [asyncio.ensure_future(self._collect(st, v, shape))
                     for st, v in zip(streams, validated, strict=True)]
            try:
                outs = await asyncio.gather(*tasks)
            finally:
                for t in tasks:
                    t.cancel()
                await close_all(streams)  # also the ones whose task never started
                await asyncio.gather(*tasks, return_exceptions=True)
            responses = [
                self._response(r.text, v.request.params.stop_sequences, o, reason, shape)
                for r, v, (o, reason) in zip(request.requests, validated, outs, strict=True)
            ]
            return pb.BatchedGenerationResponse(responses=responses)
        except ApiError as exc:
            await abort(context, exc)
            raise  # abort() raises; this keeps the type checker honest

    def _check_batch_size(self, n: int) -> None:
        limit = self.s.validator.limits.max_client_batch_size
        if n > limit:
            raise ValidationError(f"a batched call may carry at most {limit} requests "
                                  f"(--max-client-batch-size). Given: {n}; split it into smaller calls")

    async def _collect(self, stream: EventStream, v: Validated, shape: ResponseShape,
                       ) -> tuple[Outcome, int | None]:
        """Run one request to the end, or to the time limit: then (as TGIS) the tokens generated so far
        with stop_reason TIME_LIMIT, and the engine drops the request (the caller closes `stream`)."""
        if shape.time_limit_s is None:
            return await collect(stream), None
        deadline = time.monotonic() + shape.time_limit_s
        tokens: list[TokenEvent] = []
        prefill: PrefillEvent | None = None
        while (ev := await _next(stream, deadline)) is not None:
            if isinstance(ev, TokenEvent):
                tokens.append(ev)
            elif isinstance(ev, PrefillEvent):
                prefill = ev
            else:
                return Outcome(ev, tokens, prefill), None
        await stream.aclose()
        text = "".join(t.text for t in tokens if not t.special)
        final = FinalEvent(text, len(tokens), "length", v.request.params.seed, len(v.request.input_ids),
                           0.0, shape.time_limit_s)
        return Outcome(final, tokens, prefill), pb.TIME_LIMIT

    @staticmethod
    def _response(
        text: str, stops: tuple[str, ...], out: Outcome, reason: int | None, shape: ResponseShape
    ) -> pb.GenerationResponse:
        final = out.final
        generated = final.generated_text
        stop_seq = stop_sequence_of(final, stops)
        if stop_seq and not shape.include_stop_sequence:
            generated = generated[: -len(stop_seq)]
        resp = pb.GenerationResponse(
            input_token_count=final.input_length,
            generated_token_count=final.generated_tokens,
            text=(text + generated) if shape.input_text else generated,
            stop_reason=reason if reason is not None else STOP_REASON[final.finish_reason],
            stop_sequence=stop_seq,
            seed=final.seed or 0,
        )
        if shape.generated_tokens:
            resp.tokens.extend(token_info(t, shape) for t in out.tokens)
        if shape.input_tokens and out.prefill is not None:
            resp.input_tokens.extend(token_info(t, shape) for t in out.prefill.tokens)
        return resp

    async def GenerateStream(
        self, request: pb.SingleGenerationRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerationResponse]:
        try:
            params, shape = from_fmaas(request.params, _adapter(request))
            v = self.s.validate(
                request.request.text, params, stream=False, correlation_id=correlation_id(context), api="grpc"
            )
        except ApiError as exc:
            await abort(context, exc)
            return
        msgs = StreamMessages(v, shape, request.request.text)
        try:
            events = self.s.events(v)  # refused here, before the first message
        except ApiError as exc:
            await abort(context, exc)
            return
        try:
            if not shape.input_tokens:
                yield msgs.first
            while not msgs.done:
                yield msgs.message(await _next(events, msgs.deadline))
        except ApiError as exc:
            await abort(context, exc)
        finally:
            await events.aclose()

    async def Tokenize(
        self, request: pb.BatchedTokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.BatchedTokenizeResponse:
        try:
            self._check_batch_size(len(request.requests))
        except ApiError as exc:
            await abort(context, exc)
        out = []
        for r in request.requests:
            enc = self.s.tokenizer.encode(r.text)
            if request.truncate_input_tokens:
                enc = enc.truncated(request.truncate_input_tokens)
            resp = pb.TokenizeResponse(token_count=len(enc.ids))
            if request.return_tokens:
                resp.tokens.extend(enc.tokens)
            if request.return_offsets:
                resp.offsets.extend(pb.TokenizeResponse.Offset(start=a, end=b) for a, b in enc.offsets)
            out.append(resp)
        return pb.BatchedTokenizeResponse(responses=out)

    async def ModelInfo(
        self, request: pb.ModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfoResponse:
        limits = self.s.validator.limits
        return pb.ModelInfoResponse(
            model_kind=pb.ModelInfoResponse.DECODER_ONLY,
            max_sequence_length=limits.max_total_tokens,
            max_new_tokens=max(limits.max_total_tokens - 1, 1),
        )


async def _next(events: AsyncIterator[object], deadline: float | None) -> object | None:
    """The next event; None when the time limit passes first. The stream ends with a FinalEvent."""
    if deadline is None:
        return await anext(events)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return None
    try:
        return await asyncio.wait_for(anext(events), remaining)
    except asyncio.TimeoutError:
        return None
