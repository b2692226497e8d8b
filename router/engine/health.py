"""Shard health as TGI checks it: Health RPC while healthy; after a failure, the liveness Prefill
(one request, id 2^64-1, text "liveness", truncate 1, max_new_tokens 1, block 0 / slot 0, batch id
2^64-1) proves the shards can run a forward pass again. Block 0 is reserved for it in the pool.
"""

from __future__ import annotations

from chameleon_pb import generate_pb2

from router.engine.shard_client import ShardClient, ShardError

LIVENESS_ID = 2**64 - 1


def liveness_batch() -> generate_pb2.Batch:
    req = generate_pb2.Request(
        id=LIVENESS_ID, inputs="liveness", truncate=1, add_special_tokens=True,
        input_chunks=generate_pb2.Input(chunks=[generate_pb2.InputChunk(text="liveness")]),
        parameters=generate_pb2.NextTokenChooserParameters(
            temperature=1.0, top_k=0, top_p=1.0, typical_p=1.0, do_sample=False, seed=0,
            repetition_penalty=1.0, frequency_penalty=0.0),
        stopping_parameters=generate_pb2.StoppingCriteriaParameters(max_new_tokens=1),
        prefill_logprobs=False, top_n_tokens=0, blocks=[0], slots=[0])
    return generate_pb2.Batch(id=LIVENESS_ID, requests=[req], size=1, max_tokens=2, max_blocks=1)


class HealthState:
    """`healthy` flips to False when a generation RPC fails; `check()` restores it."""

    def __init__(self, client: ShardClient, healthy: bool = True) -> None:
        self._client = client
        self.healthy = healthy
        self.last_error: str | None = None

    def mark_unhealthy(self, reason: str) -> None:
        self.healthy, self.last_error = False, reason

    async def check(self, timeout_s: float = 30.0) -> bool:
        """Health RPC when the last state was healthy, the liveness Prefill otherwise."""
        try:
            if self.healthy:
                await self._client.health(timeout_s)
            else:
                result = await self._client.prefill(liveness_batch(), timeout_s=timeout_s)
                if result.batch is not None:
                    await self._client.clear_cache(result.batch.id)
        except ShardError as exc:
            self.mark_unhealthy(str(exc))
            return False
        self.healthy, self.last_error = True, None
        return True
