"""Start-up as TGI's router does it: ClearCache, Info, Warmup on every rank; Warmup sizes the pool.

The Warmup batch is TGI v3's: requests of "_test " text filling `max_batch_prefill_tokens`, each of at
most `max_input_tokens` (or the model's max_position_embeddings - 1 when no input limit is set), no blocks
(the shard carves its page pool at Warmup, after measuring peak activation memory). The pool the
router allocates from has the fewest pages any rank reported, page 0 reserved for the liveness check.
"""

from __future__ import annotations

from dataclasses import dataclass

from chameleon_pb import generate_pb2

from chameleon.core.memory import DTYPE_BYTES
from router.engine.adapter_registry import AdapterRegistry
from router.engine.config import EngineConfig
from router.engine.shard_client import ShardClient
from router.engine.types import EngineInfo


class StartupError(RuntimeError):
    """The shards cannot serve with this configuration; the message says what to change."""


@dataclass(frozen=True, slots=True)
class ShardFacts:
    """Info + Warmup merged over ranks."""

    info: EngineInfo
    dtype_bytes: int
    max_position_embeddings: int
    adapter_dtype: str = "model"  # the shards' adapter storage policy (ShardInfo.adapter_dtype)


def dtype_bytes(name: str) -> int:
    key = name.removeprefix("torch.").lower()
    if key not in DTYPE_BYTES:
        raise StartupError(f"shard reports unsupported dtype {name!r}; expected one of {sorted(DTYPE_BYTES)}")
    return DTYPE_BYTES[key]


def warmup_request(max_input: int | None, max_prefill: int, max_total: int | None,
                   max_batch_size: int | None, max_positions: int = 0) -> generate_pb2.WarmupRequest:
    """TGI v3's synthetic warmup batch (`max_input`/`max_total` None = let the shard choose): requests
    of at most `max_input` tokens (None: at most `max_positions` - 1, the longest prompt the model
    takes; 0 = unknown) until `max_prefill` tokens are reached."""
    per_req = max_input or (min(max_prefill, max_positions - 1) if max_positions > 1 else max_prefill)
    requests, n_tokens = [], 0
    while n_tokens < max_prefill:
        truncate = min(per_req, max_prefill - n_tokens)
        new = max(1, (max_total - truncate) if max_total else 1)
        requests.append(generate_pb2.Request(
            id=len(requests), inputs="_test " * per_req, truncate=truncate, add_special_tokens=True,
            input_chunks=generate_pb2.Input(chunks=[generate_pb2.InputChunk(text="_test " * per_req)]),
            parameters=generate_pb2.NextTokenChooserParameters(
                temperature=0.9, top_k=10, top_p=0.9, typical_p=0.9, do_sample=False, seed=0,
                repetition_penalty=1.2, frequency_penalty=0.1),
            stopping_parameters=generate_pb2.StoppingCriteriaParameters(max_new_tokens=new,
                                                                        ignore_eos_token=True),
            prefill_logprobs=True, top_n_tokens=5))
        n_tokens += per_req
        if max_batch_size and len(requests) >= max_batch_size:
            break
    batch = generate_pb2.Batch(id=0, requests=requests, size=len(requests), max_tokens=per_req)
    req = generate_pb2.WarmupRequest(batch=batch, max_prefill_tokens=max_prefill)
    if max_input is not None:
        req.max_input_tokens = max_input
    if max_total is not None:
        req.max_total_tokens = max_total
    return req


async def start_shards(client: ShardClient, cfg: EngineConfig) -> ShardFacts:
    """ClearCache, Info, Warmup on every rank; returns the merged facts that size the engine."""
    await client.clear_cache()
    infos = await client.info()
    first = infos[0]
    if first.block_size == 0:
        raise StartupError("shard reports block_size 0; a paged KV cache is required")
    max_pos = first.chameleon.max_position_embeddings or 0
    check_limits(cfg, max_pos)
    warm = await client.warmup(warmup_request(cfg.max_input_tokens, cfg.max_batch_prefill_tokens,
                                              cfg.max_total_tokens, cfg.max_batch_size, max_pos))
    return _facts(cfg, first, warm)


def check_limits(cfg: EngineConfig, max_positions: int) -> None:
    """StartupError when the configured limits contradict each other or the model the shards serve
    (`max_positions` = its max_position_embeddings as the shards report it; 0 = unknown)."""
    model = f"the model's max_position_embeddings is {max_positions}"
    if max_positions and cfg.max_total_tokens is not None and cfg.max_total_tokens > max_positions:
        raise StartupError(f"--max-total-tokens ({cfg.max_total_tokens}) is above what the model supports: "
                           f"{model}")
    if max_positions and cfg.max_input_tokens is not None and cfg.max_input_tokens >= max_positions:
        raise StartupError(f"--max-input-tokens ({cfg.max_input_tokens}) must be below {max_positions}: "
                           f"{model}")
    if cfg.max_input_tokens is not None and cfg.max_total_tokens is not None \
            and cfg.max_input_tokens >= cfg.max_total_tokens:
        raise StartupError(f"--max-input-tokens ({cfg.max_input_tokens}) must be smaller than "
                           f"--max-total-tokens ({cfg.max_total_tokens})")


def _facts(cfg: EngineConfig, first: generate_pb2.InfoResponse,
           warm: list[generate_pb2.WarmupResponse]) -> ShardFacts:
    block = first.block_size
    num_pages = min(w.pool.num_pages for w in warm) if all(w.HasField("pool") for w in warm) else 0
    supported = min((w.max_supported_total_tokens for w in warm
                     if w.HasField("max_supported_total_tokens")), default=0)
    if num_pages == 0:  # a plain generate.v3 shard: blocks [0, supported / block), as TGI counts them
        num_pages = supported // block
    if num_pages < 2:
        raise StartupError(f"the shards' page pool has {num_pages} pages after Warmup; give the shard "
                           "more memory (--memory-budget) or lower --max-batch-prefill-tokens")
    max_pos = first.chameleon.max_position_embeddings or 0
    usable = (num_pages - 1) * block
    total = cfg.max_total_tokens or warm[0].max_total_tokens or max_pos or usable
    total = min(total, usable)
    max_input = cfg.max_input_tokens or warm[0].max_input_tokens or total - 1
    max_input = min(max_input, total - 1)
    if max_input < 1:
        raise StartupError(f"max total tokens {total} leaves no room for input; raise the pool size")
    info = EngineInfo(
        model_id=cfg.model_id, model_type=first.chameleon.model_type, dtype=first.dtype,
        device_type=first.device_type, block_size=block, world_size=max(1, len(warm)),
        num_pages=num_pages, max_input_tokens=max_input, max_total_tokens=total,
        max_batch_prefill_tokens=cfg.max_batch_prefill_tokens,
        max_concurrent_requests=cfg.max_concurrent_requests,
        max_supported_total_tokens=supported or usable, page_bytes=warm[0].pool.page_bytes,
        memory_headroom=cfg.memory_headroom.describe() if cfg.memory_headroom is not None else "off")
    return ShardFacts(info=info, dtype_bytes=dtype_bytes(first.dtype), max_position_embeddings=max_pos,
                      adapter_dtype=first.chameleon.adapter_dtype or "model")


async def adopt_shard_adapters(client: ShardClient, registry: AdapterRegistry) -> None:
    """Register the adapters the shard holds (its --lora-adapters); offload them, so the router owns
    the pool and assigns their pages itself. Not for v3-only shards (they keep theirs and cannot list
    them)."""
    listed = await client.list_adapters()
    for a in listed.adapters:
        if a.rank < 1 or not a.target_modules:
            continue  # listed but not loaded: its size is unknown here (found under --adapter-dir)
        registry.add_from_shard(a.adapter_id, a.rank, a.alpha, tuple(a.target_modules), a.dtype)
        if a.resident:
            await client.offload_adapter(a.adapter_id)
