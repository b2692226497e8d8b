"""Drive one request through the shards directly — no scheduler, no cache policy, no streams.

The reference the engine is measured against: tests compare tokens (greedy), the overhead benchmark
compares time to first token. The caller owns the pages (KV pages and, for an adapter, its pages);
the shards must already be warmed up.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from chameleon_pb import generate_pb2

from router.engine.batches import request_pb
from router.engine.shard_client import ShardClient
from router.engine.types import GenerateRequest


@dataclass(frozen=True, slots=True)
class DirectResult:
    token_ids: list[int]
    text: str
    ttft_s: float
    total_s: float


async def direct_generate(client: ShardClient, req: GenerateRequest, kv_pages: Sequence[int],
                          block_size: int, rid: int = 1, batch_id: int = 1, seed: int = 0) -> DirectResult:
    """Prefill then Decode until the request finishes; returns its tokens and timings."""
    t0 = time.perf_counter()
    pb = request_pb(rid, req, seed, kv_pages, block_size)
    batch = generate_pb2.Batch(id=batch_id, requests=[pb], size=1, max_tokens=len(pb.slots),
                               max_blocks=len(kv_pages))
    res = await client.prefill(batch)
    ttft = time.perf_counter() - t0
    ids: list[int] = []
    text = ""
    while True:
        for g in res.generations:
            ids.extend(g.tokens.ids)
            if g.HasField("generated_text"):
                text = g.generated_text.text
        if res.batch is None or not res.batch.request_ids:
            break
        res = await client.decode([res.batch])
    return DirectResult(ids, text, ttft, time.perf_counter() - t0)
