"""Batch: the per-request state a shard keeps between steps, with TGI's from_pb / filter / concatenate.

A request's KV lives in the blocks (pool pages) and slots the router assigned it; slot k holds the KV
of the token at position k. `kv_len` tokens of `ids` are in the KV cache; the next step feeds
`ids[kv_len:]` (a whole prompt, the rest of a chunked prompt, or the one token sampled last step).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from chameleon_pb import generate_pb2

from chameleon.core.adapter_files import BASE_ADAPTER_IDS
from shard.model.runner import ForwardBatch
from shard.server.detok import DetokState
from shard.server.sampling import EosShaping, RowSampler, SamplingParams
from shard.server.stopping import StoppingCriteria

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True, slots=True)
class BatchContext:
    """What building a batch needs from the shard: tokenizer, EOS ids and limits."""

    tokenizer: PreTrainedTokenizerBase
    eos_token_ids: frozenset[int]
    block_size: int
    num_pages: int
    max_positions: int


@dataclass(slots=True)
class RequestState:
    id: int
    ids: list[int]
    prompt_len: int
    blocks: list[int]
    slots: list[int]
    adapter_id: str | None
    sampler: RowSampler
    stopping: StoppingCriteria
    detok: DetokState
    prefill_logprobs: bool = False
    top_n: int = 0
    kv_len: int = 0
    chunk_len: int | None = None
    prefill_lps: list[float] = field(default_factory=list)

    @property
    def prefilling(self) -> bool:
        return self.kv_len < self.prompt_len

    def query_len(self) -> int:
        """Tokens the next step feeds: the rest of the prompt (first chunk capped by chunk_len) or 1."""
        pending = len(self.ids) - self.kv_len
        if self.chunk_len and self.kv_len == 0:
            return min(pending, self.chunk_len)
        return pending


def prompt_text(req: generate_pb2.Request) -> str:
    """Text chunks of `input_chunks` concatenated; falls back to `inputs`."""
    chunks = req.input_chunks.chunks if req.HasField("input_chunks") else []
    if any(c.HasField("image") for c in chunks):
        raise ValueError(f"request {req.id}: image inputs are not supported by this text-only model")
    return "".join(c.text for c in chunks) if chunks else req.inputs


def _validate_request(req: generate_pb2.Request, ctx: BatchContext) -> None:
    if req.cache_len:
        raise ValueError(f"request {req.id}: cache_len={req.cache_len} but this shard has no prefix "
                         "caching (use_prefix_caching is false); send cache_len 0")
    if req.parameters.grammar_type != generate_pb2.GRAMMAR_TYPE_NONE or req.parameters.grammar:
        raise ValueError(f"request {req.id}: grammar-constrained generation is not supported")
    if req.parameters.watermark:
        raise ValueError(f"request {req.id}: watermarking is not supported")
    if req.stopping_parameters.max_new_tokens < 1:
        raise ValueError(f"request {req.id}: max_new_tokens must be >= 1")
    if not req.blocks:
        raise ValueError(f"request {req.id}: no KV blocks assigned (blocks is empty); the router must "
                         "assign pool pages for the prompt and the new tokens")
    bad = [b for b in req.blocks if b >= ctx.num_pages]
    if bad:
        raise ValueError(f"request {req.id}: blocks {bad[:4]} are outside the pool (0..{ctx.num_pages - 1})")


def _sampler(req: generate_pb2.Request, ctx: BatchContext) -> RowSampler:
    """The request's sampler, with TGIS's EOS shaping (min_new_tokens, length penalty) unless EOS is
    ignored (then EOS never stops the request, so neither applies)."""
    params = SamplingParams.from_pb(req.parameters)
    stop, extras = req.stopping_parameters, req.parameters.chameleon
    if stop.ignore_eos_token:
        return RowSampler(params)
    if stop.chameleon.min_new_tokens > stop.max_new_tokens:
        raise ValueError(f"request {req.id}: min_new_tokens ({stop.chameleon.min_new_tokens}) must be <= "
                         f"max_new_tokens ({stop.max_new_tokens})")
    eos = EosShaping.build(tuple(ctx.eos_token_ids), int(stop.chameleon.min_new_tokens),
                           int(extras.length_penalty_start), float(extras.length_penalty_decay))
    return RowSampler(params, eos)


def _slots(req: generate_pb2.Request, block_size: int) -> list[int]:
    if req.slots:
        return list(req.slots)
    return [b * block_size + i for b in req.blocks for i in range(block_size)]


def request_from_pb(req: generate_pb2.Request, ctx: BatchContext) -> RequestState:
    """Tokenize and validate one generate.v3 Request (ValueError with a readable message if bad)."""
    _validate_request(req, ctx)
    text = prompt_text(req)
    ids = list(ctx.tokenizer(text, add_special_tokens=req.add_special_tokens)["input_ids"])
    if req.truncate:
        ids = ids[-req.truncate:]
    if not ids:
        raise ValueError(f"request {req.id}: the prompt is empty after tokenization")
    slots = _slots(req, ctx.block_size)
    if len(ids) > len(slots):
        raise ValueError(f"request {req.id}: input of {len(ids)} tokens is too long for the "
                         f"{len(slots)} KV slots assigned to it")
    if len(ids) >= ctx.max_positions:
        raise ValueError(f"request {req.id}: input of {len(ids)} tokens is too long for this model "
                         f"(max_position_embeddings {ctx.max_positions})")
    adapter = req.adapter_id if req.HasField("adapter_id") and req.adapter_id not in BASE_ADAPTER_IDS \
        else None
    return RequestState(
        id=req.id, ids=ids, prompt_len=len(ids), blocks=list(req.blocks),
        slots=slots[:ctx.max_positions], adapter_id=adapter,
        sampler=_sampler(req, ctx),
        stopping=StoppingCriteria.from_pb(req.stopping_parameters, ctx.eos_token_ids),
        detok=DetokState.for_prompt(len(ids)), prefill_logprobs=req.prefill_logprobs,
        top_n=int(req.top_n_tokens), chunk_len=req.chunk_len if req.HasField("chunk_len") else None)


class Batch:
    """Requests that step together. Order is stable: filter and concatenate keep relative order."""

    __slots__ = ("id", "requests")

    def __init__(self, batch_id: int, requests: list[RequestState]) -> None:
        self.id = batch_id
        self.requests = requests

    @classmethod
    def from_pb(cls, pb: generate_pb2.Batch, ctx: BatchContext) -> Batch:
        if not pb.requests:
            raise ValueError(f"batch {pb.id} has no requests")
        return cls(pb.id, [request_from_pb(r, ctx) for r in pb.requests])

    @classmethod
    def admit_pb(cls, pb: generate_pb2.Batch, ctx: BatchContext) -> tuple[Batch | None, dict[int, str]]:
        """Like `from_pb`, but a request that fails validation is refused alone: returns the batch of
        the valid requests (None if there is none) and {request id: reason} for the refused ones.
        Validation is deterministic, so every tensor-parallel rank refuses the same requests."""
        if not pb.requests:
            raise ValueError(f"batch {pb.id} has no requests")
        kept: list[RequestState] = []
        refused: dict[int, str] = {}
        for r in pb.requests:
            try:
                kept.append(request_from_pb(r, ctx))
            except ValueError as exc:
                refused[r.id] = str(exc)
        return (cls(pb.id, kept) if kept else None), refused

    def without(self, request_ids: Iterable[int]) -> Batch | None:
        """This batch minus `request_ids` (None when nothing is left)."""
        gone = set(request_ids)
        left = [r for r in self.requests if r.id not in gone]
        return Batch(self.id, left) if left else None

    def __len__(self) -> int:
        return len(self.requests)

    def filter(self, request_ids: Iterable[int]) -> Batch:
        keep = set(request_ids)
        unknown = keep - {r.id for r in self.requests}
        if unknown:
            raise ValueError(f"batch {self.id} has no requests {sorted(unknown)[:8]}")
        return Batch(self.id, [r for r in self.requests if r.id in keep])

    @staticmethod
    def concatenate(batches: Sequence[Batch]) -> Batch:
        """One batch holding every request of `batches`, with the first batch's id."""
        if not batches:
            raise ValueError("nothing to concatenate")
        seen: set[int] = set()
        out: list[RequestState] = []
        for b in batches:
            for r in b.requests:
                if r.id in seen:
                    raise ValueError(f"request {r.id} appears in two batches")
                seen.add(r.id)
                out.append(r)
        return Batch(batches[0].id, out)

    def blocks_in_use(self) -> set[int]:
        return {b for r in self.requests for b in r.blocks}

    def adapters_in_use(self) -> set[str]:
        return {r.adapter_id for r in self.requests if r.adapter_id is not None}

    def forward_batch(self) -> ForwardBatch:
        """The model's view of the next step (host tensors: the runner copies them to its device)."""
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        qlens: list[int] = []
        for r in self.requests:
            q = r.query_len()
            ids += r.ids[r.kv_len:r.kv_len + q]
            positions += range(r.kv_len, r.kv_len + q)
            slots += r.slots[r.kv_len:r.kv_len + q]
            qlens.append(q)
        return ForwardBatch(
            input_ids=torch.tensor(ids, dtype=torch.long),
            positions=torch.tensor(positions, dtype=torch.long),
            slots=torch.tensor(slots, dtype=torch.long),
            query_lens=qlens,
            context_lens=[r.kv_len + q for r, q in zip(self.requests, qlens, strict=True)],
            block_tables=[r.blocks for r in self.requests],
            adapter_ids=[r.adapter_id for r in self.requests],
            all_logits=[r.prefill_logprobs and r.prefilling for r in self.requests],
        )

    def to_pb(self) -> generate_pb2.CachedBatch:
        return generate_pb2.CachedBatch(
            id=self.id, request_ids=[r.id for r in self.requests], size=len(self.requests),
            max_tokens=sum(len(r.slots) for r in self.requests),
            current_tokens=sum(r.query_len() for r in self.requests))
