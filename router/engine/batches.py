"""Build generate.v3 Prefill batches from admitted requests (TGI v3 layout).

Each request carries its KV `blocks` (the pool pages the router reserved for input + max_new_tokens)
and `slots` covering every token of those blocks (slot = page * block_size + offset), so the shard
never needs more memory mid-flight. `truncate = len(input_ids)` keeps the shard's tokenization of the
text to the token count the reservation was sized for.
"""

from __future__ import annotations

from collections.abc import Sequence

from chameleon_pb import generate_pb2

from router.engine.live import Live
from router.engine.types import GenerateRequest


def slots_for(pages: Sequence[int], block_size: int) -> list[int]:
    return [s for p in pages for s in range(p * block_size, (p + 1) * block_size)]


def shard_request(live: Live, pages: Sequence[int], block_size: int) -> generate_pb2.Request:
    return request_pb(live.rid, live.req, live.seed, pages, block_size)


def request_pb(rid: int, req: GenerateRequest, seed: int, pages: Sequence[int],
               block_size: int) -> generate_pb2.Request:
    """The generate.v3 Request for `req` with KV `pages` (and every slot of them)."""
    p = req.params
    r = generate_pb2.Request(
        id=rid, inputs=req.text, truncate=len(req.input_ids), add_special_tokens=True,
        input_chunks=generate_pb2.Input(chunks=[generate_pb2.InputChunk(text=req.text)]),
        parameters=generate_pb2.NextTokenChooserParameters(
            temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, typical_p=p.typical_p,
            do_sample=p.do_sample, seed=seed, repetition_penalty=p.repetition_penalty,
            frequency_penalty=p.frequency_penalty),
        stopping_parameters=generate_pb2.StoppingCriteriaParameters(
            max_new_tokens=p.max_new_tokens, stop_sequences=p.stop_sequences,
            ignore_eos_token=p.ignore_eos_token),
        prefill_logprobs=p.prefill_logprobs, top_n_tokens=p.top_n_tokens,
        blocks=pages, slots=slots_for(pages, block_size))
    if req.adapter_id is not None:
        r.adapter_id = req.adapter_id
    if p.min_new_tokens:
        r.stopping_parameters.chameleon.min_new_tokens = p.min_new_tokens
    if p.length_penalty is not None:
        extras = r.parameters.chameleon
        extras.length_penalty_start, extras.length_penalty_decay = p.length_penalty
    return r


def prefill_batch(batch_id: int, lives: Sequence[Live], pages: Sequence[Sequence[int]],
                  block_size: int) -> generate_pb2.Batch:
    requests = [shard_request(lv, pg, block_size) for lv, pg in zip(lives, pages, strict=True)]
    return generate_pb2.Batch(
        id=batch_id, requests=requests, size=len(requests),
        max_tokens=sum(lv.core.total_tokens for lv in lives),
        max_blocks=max((len(pg) for pg in pages), default=0))
