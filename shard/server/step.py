"""One generation step over a Batch: forward, choose tokens, detokenize, stop, build Generations.

Every tensor-parallel rank runs the step for every request (logits are gathered on every rank and
each request's generator is seeded identically, so all ranks choose the same tokens); each rank
returns only the Generations of requests with `request_id % world_size == rank`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from chameleon_pb import generate_pb2

from shard.server.batch import Batch, RequestState
from shard.server.detok import next_piece
from shard.server.sampling import StepChoice, choose_tokens
from shard.server.stopping import LENGTH

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from shard.model.runner import ModelRunner


@dataclass(frozen=True, slots=True)
class StepResult:
    generations: list[generate_pb2.Generation]
    next_batch: Batch | None
    forward_ns: int
    decode_ns: int


@dataclass(frozen=True, slots=True)
class StepEnv:
    """What a step needs besides the batch: the runner, the tokenizer and this rank's place."""

    runner: ModelRunner
    tokenizer: PreTrainedTokenizerBase
    special_ids: frozenset[int]
    rank: int = 0
    world_size: int = 1


def _tokens(env: StepEnv, ids: list[int], logprobs: list[float]) -> generate_pb2.Tokens:
    texts = [env.tokenizer.decode([i], skip_special_tokens=False) for i in ids]
    return generate_pb2.Tokens(ids=ids, logprobs=logprobs, texts=texts,
                               is_special=[i in env.special_ids for i in ids])


def _record_prefill_logprobs(r: RequestState, q: int, logits: torch.Tensor | None) -> None:
    """Logprob of each prompt token given its prefix (the first prompt token gets NaN)."""
    if not r.prefill_logprobs or logits is None:
        return
    if r.kv_len == 0:
        r.prefill_lps.append(math.nan)
    logp = torch.log_softmax(logits.float(), dim=-1)
    nxt = [p + 1 for p in range(r.kv_len, r.kv_len + q) if p + 1 < r.prompt_len]
    if nxt:
        idx = torch.tensor([r.ids[p] for p in nxt], device=logp.device).unsqueeze(1)
        r.prefill_lps += logp[: len(nxt)].gather(1, idx).squeeze(1).tolist()


def generate_step(env: StepEnv, batch: Batch) -> StepResult:
    """Run one step of `batch` (mutates its request states); finished requests leave the batch."""
    t0 = time.perf_counter_ns()
    fb = batch.forward_batch()
    out = env.runner.forward(fb)
    t1 = time.perf_counter_ns()
    ready: list[int] = []
    for i, (r, q) in enumerate(zip(batch.requests, fb.query_lens, strict=True)):
        _record_prefill_logprobs(r, q, out.all_logits[i] if out.all_logits else None)
        r.kv_len += q
        if r.kv_len == len(r.ids):
            ready.append(i)
    reqs = [batch.requests[i] for i in ready]
    dev = out.last_logits.device
    histories = [torch.tensor(r.ids, dtype=torch.long, device=dev) if not r.sampler.params.plain_greedy else
                 torch.empty(0, dtype=torch.long, device=dev) for r in reqs]
    logits = out.last_logits if len(ready) == len(batch.requests) else out.last_logits[ready]  # no copy
    choice = choose_tokens(logits, [r.sampler for r in reqs], histories,
                           [r.top_n for r in reqs], [len(r.ids) - r.prompt_len for r in reqs],
                           env.runner.backend)
    generations: list[generate_pb2.Generation] = []
    finished: set[int] = set()
    for k, r in enumerate(reqs):
        gen, done = _advance(env, r, choice.next_ids[k], choice.logprobs[k], k, choice)
        if done:
            finished.add(r.id)
        if r.id % env.world_size == env.rank:
            generations.append(gen)
    left = [r.id for r in batch.requests if r.id not in finished]
    next_batch = batch.filter(left) if left else None
    return StepResult(generations, next_batch, t1 - t0, time.perf_counter_ns() - t1)


def _advance(env: StepEnv, r: RequestState, token: int, logprob: float, k: int,
             choice: StepChoice) -> tuple[generate_pb2.Generation, bool]:
    first = len(r.ids) == r.prompt_len
    r.ids.append(token)
    piece = next_piece(env.tokenizer, r.ids, r.detok)
    reason = r.stopping.check(token, piece)
    if reason is None and len(r.ids) - 1 >= len(r.slots):
        reason = LENGTH  # no KV slot left for the next token
    gen = generate_pb2.Generation(
        request_id=r.id,
        tokens=generate_pb2.Tokens(ids=[token], logprobs=[logprob], texts=[piece],
                                   is_special=[token in env.special_ids]))
    if first and r.prefill_logprobs:
        gen.prefill_tokens.CopyFrom(_tokens(env, r.ids[:r.prompt_len], r.prefill_lps))
    if r.top_n:
        top = _tokens(env, choice.top_ids[k], choice.top_logprobs[k])
        gen.top_tokens.append(top)
    if reason is not None:
        out_ids = r.ids[r.prompt_len:]
        text = env.tokenizer.decode(out_ids, skip_special_tokens=True)
        gen.generated_text.CopyFrom(generate_pb2.GeneratedText(
            text=text, generated_tokens=len(out_ids), finish_reason=reason))
        if r.sampler.params.do_sample:
            gen.generated_text.seed = r.sampler.params.seed
    return gen, reason is not None
