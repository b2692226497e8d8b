"""Open-loop load generator: each request is sent at its planned arrival time whether or not earlier
ones have finished (asyncio + fmaas `GenerateStream`), and timed token by token.

Stream contract (router/api/fmaas_stream.py): first message = `input_token_count`, then one message
per generated token (`generated_token_count` counts up), last message carries `stop_reason`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from chameleon_pb import chameleon_pb2, chameleon_pb2_grpc, generation_pb2, generation_pb2_grpc

from chameleon.tools.bench.stats import RequestRecord
from chameleon.tools.bench.workload import prompt_text
from chameleon.workload import WorkItem

CANCELLED = "CANCELLED_BY_BENCH"    # the error of a request the bench itself cancelled


def grpc_address(target: str) -> str:
    """`grpc://host:port` or `host:port` -> `host:port`."""
    addr = target.removeprefix("grpc://")
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--target {target!r}: expected grpc://HOST:PORT (e.g. grpc://127.0.0.1:8033)")
    return addr


@dataclass(frozen=True, slots=True)
class ServerInfo:
    max_total_tokens: int
    max_new_tokens: int
    adapters: tuple[tuple[str, int, int], ...]   # (id, rank, true bytes)


async def server_info(target: str, timeout_s: float = 30.0) -> ServerInfo:
    """Limits (ModelInfo) and served adapters (AdapterAdmin.ListAdapters) of a running router."""
    async with grpc.aio.insecure_channel(grpc_address(target)) as ch:
        try:
            info = await generation_pb2_grpc.GenerationServiceStub(ch).ModelInfo(
                generation_pb2.ModelInfoRequest(), timeout=timeout_s)
            listed = await chameleon_pb2_grpc.AdapterAdminStub(ch).ListAdapters(
                chameleon_pb2.ListAdaptersRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise ConnectionError(f"cannot reach the router at {target}: {exc.code().name} "
                                  f"{exc.details()}") from None
    adapters = tuple(sorted((a.adapter_id, a.rank, a.bytes) for a in listed.adapters))
    return ServerInfo(info.max_sequence_length, info.max_new_tokens, adapters)


def _request(item: WorkItem, seed: int) -> generation_pb2.SingleGenerationRequest:
    # Sampling with a per-request seed: reproducible text, and unlike greedy decoding it rarely
    # settles on an early end-of-sequence token for these synthetic prompts.
    params = generation_pb2.Parameters(
        method=generation_pb2.SAMPLE,
        sampling=generation_pb2.SamplingParameters(temperature=1.0, seed=seed * 1_000_003 + item.id),
        stopping=generation_pb2.StoppingCriteria(max_new_tokens=item.output_tokens),
        truncate_input_tokens=item.input_tokens)
    req = generation_pb2.SingleGenerationRequest(
        request=generation_pb2.GenerationRequest(text=prompt_text(item.id, item.input_tokens, seed)),
        params=params)
    if item.adapter_id is not None:
        req.adapter_id = item.adapter_id
    return req


async def stream_one(stub: generation_pb2_grpc.GenerationServiceStub, item: WorkItem, rec: RequestRecord,
               start: float, seed: int, timeout_s: float) -> None:
    req = _request(item, seed)
    await asyncio.sleep(max(0.0, start + item.arrival - time.perf_counter()))
    sent = time.perf_counter()
    rec.sent_s = sent - start
    last: float | None = None
    count = 0
    try:
        async for msg in stub.GenerateStream(req, timeout=timeout_s):
            now = time.perf_counter()
            if msg.input_token_count:
                rec.prompt_tokens = msg.input_token_count
            if msg.generated_token_count > count:
                if last is None:
                    rec.ttft_s = now - sent
                else:
                    rec.gaps_s.append(now - last)
                last, count = now, msg.generated_token_count
            if msg.stop_reason:
                rec.stop_reason = generation_pb2.StopReason.Name(msg.stop_reason)
        rec.generated_tokens = count
        rec.e2e_s = time.perf_counter() - sent
        if rec.ttft_s is None:
            rec.error = "no token"
    except grpc.aio.AioRpcError as exc:
        rec.error = exc.code().name
    except asyncio.CancelledError:
        rec.error = CANCELLED
        raise


async def replay(target: str, items: Sequence[WorkItem], *, seed: int = 0, channels: int = 4,
                 request_timeout_s: float = 600.0,
                 drain_timeout_s: float | None = None) -> list[RequestRecord]:
    """Send every item at its arrival offset; return one record per item (in item order). Requests
    still running `drain_timeout_s` after the last arrival are cancelled and recorded as errors."""
    records = [RequestRecord(w.id, w.adapter_id, w.input_tokens, w.output_tokens, w.arrival) for w in items]
    chans = [grpc.aio.insecure_channel(grpc_address(target)) for _ in range(max(1, channels))]
    stubs = [generation_pb2_grpc.GenerationServiceStub(c) for c in chans]
    start = time.perf_counter() + 0.2
    tasks = [asyncio.ensure_future(stream_one(stubs[i % len(stubs)], w, r, start, seed, request_timeout_s))
             for i, (w, r) in enumerate(zip(items, records, strict=True))]
    last = max((w.arrival for w in items), default=0.0)
    try:
        if tasks:
            wait = None if drain_timeout_s is None \
                else max(0.0, start + last + drain_timeout_s - time.perf_counter())
            _, pending = await asyncio.wait(tasks, timeout=wait)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    finally:
        for c in chans:
            await c.close()
    return records
