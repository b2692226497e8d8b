"""generate.v3 TextGenerationService: the batch cache and the RPCs a TGI router drives.

Every RPC that touches model state runs under one lock, in arrival order: tensor-parallel ranks run
collectives inside `forward`, so every rank must execute the same RPCs in the same order (the router
sends each RPC to every rank and waits for all of them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import grpc
import torch
from chameleon_pb import chameleon_pb2, generate_pb2, generate_pb2_grpc

from chameleon.core.memory import LORA_TARGETS
from shard.lora.errors import AdapterError
from shard.server.adapter_manager import AdapterManager
from shard.server.batch import Batch, BatchContext, prompt_text
from shard.server.headroom import DeviceMemory, measure_headroom
from shard.server.step import StepEnv, StepResult, generate_step
from shard.server.warmup import (
    free_bytes_for_pool,
    plan_pool,
    pool_layout,
    release_pool,
    warmup_batch_with_blocks,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from shard.lora.store import AdapterStore
    from shard.model.runner import ModelRunner

log = logging.getLogger("shard.server")
T = TypeVar("T")
Reply = TypeVar("Reply", generate_pb2.PrefillResponse, generate_pb2.DecodeResponse)


@dataclass(frozen=True, slots=True)
class ShardOptions:
    uds_path: str
    memory: DeviceMemory
    adapter_pages: int | None = None  # None: see ShardCore.self_region_pages
    memory_fraction: float = 0.9
    dtype_name: str = "float32"
    adapter_dtype: str = "auto"  # --adapter-dtype; Info reports the store's effective policy


class ShardCore:
    """Model-side state shared by both services: runner, tokenizer, batch cache, adapter manager."""

    def __init__(self, runner: ModelRunner, tokenizer: PreTrainedTokenizerBase, eos_ids: frozenset[int],
                 adapter_manager: AdapterManager, options: ShardOptions) -> None:
        self.runner, self.tokenizer, self.eos_ids = runner, tokenizer, eos_ids
        self.adapter_manager, self.options = adapter_manager, options
        self.rank, self.world = runner.dist.rank, runner.dist.world_size
        self.cache: dict[int, Batch] = {}
        self.lock = threading.Lock()
        self.env = StepEnv(runner, tokenizer, frozenset(getattr(tokenizer, "all_special_ids", ())),
                           self.rank, self.world)

    def locked(self, fn: Callable[[], T]) -> T:
        with self.lock:
            return fn()

    def context(self) -> BatchContext:
        if not self.runner.num_pages:
            raise ValueError("the shard has no KV pool yet: call Warmup first")
        return BatchContext(self.tokenizer, self.eos_ids, self.runner.block_size, self.runner.num_pages,
                            self.runner.config.max_position_embeddings)

    def busy(self, extra: Batch | None = None) -> tuple[set[int], set[str]]:
        batches = [*self.cache.values(), *([extra] if extra else [])]
        pages = {p for b in batches for p in b.blocks_in_use()}
        return pages, {a for b in batches for a in b.adapters_in_use()}

    def prepare(self, batch: Batch) -> dict[int, str]:
        """Plain-TGI mode: make every adapter the batch names resident (loaded by the shard itself).
        Returns {request id: reason} for the requests whose adapter cannot be loaded; the others'
        adapters are resident."""
        refused: dict[int, str] = {}
        for aid in sorted(batch.adapters_in_use()):
            pages, names = self.busy(batch)
            try:
                self.adapter_manager.ensure_resident([aid], pages, names)
            except ValueError as exc:  # AdapterError: missing, corrupt or too large for the region
                refused.update({r.id: f"adapter {aid!r} cannot be loaded: {exc}"
                                for r in batch.requests if r.adapter_id == aid})
        return refused

    def pop(self, batch_id: int) -> Batch:
        batch = self.cache.pop(batch_id, None)
        if batch is None:
            raise ValueError(f"batch {batch_id} is not in the shard's cache")
        return batch

    def headroom(self) -> chameleon_pb2.Headroom:
        pages, _ = self.busy()
        resident = self.adapter_manager.store.resident()
        return measure_headroom(self.options.memory, self.rank, self.runner.num_pages or 0,
                                self.runner.page_bytes, pages, resident, self.serving_bytes(resident),
                                pool=self.runner.pool)

    def serving_bytes(self, resident: list) -> int:
        """Bytes of the serving tensors: weights, the pool, adapter copies outside the pool."""
        pool = self.runner.pool.nbytes if self.runner.pool is not None else 0
        return self.runner.weight_bytes + pool + sum(a.extra_bytes for a in resident)

    def run_step(self, batch: Batch) -> StepResult:
        result = generate_step(self.env, batch)
        if result.next_batch is not None:
            self.cache[result.next_batch.id] = result.next_batch
        return result

    def step_reply(self, cls: type[Reply], result: StepResult, t0: int,
                   concat_ns: int | None = None) -> Reply:
        reply = cls(generations=result.generations, forward_ns=result.forward_ns,
                    decode_ns=result.decode_ns, total_ns=time.perf_counter_ns() - t0,
                    headroom=self.headroom())
        if result.next_batch is not None:
            reply.batch.CopyFrom(result.next_batch.to_pb())
        if concat_ns is not None:
            reply.concat_ns = concat_ns
        return reply

    def self_region_pages(self, pool_pages: int) -> int:
        """Pages kept for adapters the shard loads itself: `--adapter-pages`, else what the startup
        adapters need plus, with --adapter-dir, room for its 8 largest adapters (at least 10% of the
        pool, at most half of it)."""
        if self.options.adapter_pages is not None:
            return self.options.adapter_pages
        store, manager = self.adapter_manager.store, self.adapter_manager
        named = sum(store.pages_needed(p) for p in manager.named.values())
        if manager.adapter_dir is None:
            return named
        sizes = sorted((_pages_or_zero(store, manager.adapter_dir / a) for a in manager.available()
                        if a not in manager.named), reverse=True)
        return named + min(max(sum(sizes[:8]), pool_pages // 10), pool_pages // 2)

    def agree_min(self, value: int) -> int:
        """The minimum of `value` over tensor-parallel ranks (gathered on the group's device)."""
        if self.world == 1:
            return value
        import torch.distributed as tdist

        device = collective_device(str(tdist.get_backend(self.runner.dist.group)), self.runner.device)
        t = torch.tensor([value], dtype=torch.int64, device=device)
        return int(self.runner.dist.all_gather(t, [1] * self.world).min())


def collective_device(backend: str, model_device: torch.device) -> torch.device:
    """Where a tensor handed to a collective of a process group with this `backend` must live: nccl
    takes CUDA tensors only (the model's device), gloo host tensors (so two ranks sharing one GPU over
    gloo gather on the CPU); a group with a gloo part ("cpu:gloo,cuda:nccl") takes host tensors."""
    if "gloo" in backend.lower() or model_device.type != "cuda":
        return torch.device("cpu")
    return model_device


def _pages_or_zero(store: AdapterStore, path: Path) -> int:
    """Pages an adapter folder needs; 0 for a broken one (it fails later, when a request names it)."""
    try:
        return store.pages_needed(path)
    except (AdapterError, OSError):
        return 0


class TextGenerationService(generate_pb2_grpc.TextGenerationServiceServicer):
    """`refuse_per_request` False: a bad request fails the whole Prefill (INVALID_ARGUMENT) before
    anything runs, as TGI's server does; a plain generate.v3 peer has no `rejected` field to read."""

    def __init__(self, core: ShardCore, refuse_per_request: bool = True) -> None:
        self.core = core
        self.refuse_per_request = refuse_per_request

    def Info(self, request: generate_pb2.InfoRequest,
             context: grpc.ServicerContext | None) -> generate_pb2.InfoResponse:
        r, cfg = self.core.runner, self.core.runner.config
        return generate_pb2.InfoResponse(
            requires_padding=False, dtype=self.core.options.dtype_name, device_type=r.device.type,
            speculate=0, support_chunking=True, use_prefix_caching=False, attention_impl="paged",
            block_size=r.block_size,
            chameleon=chameleon_pb2.ShardInfo(
                rank=self.core.rank, world_size=self.core.world, model_type=cfg.model_type,
                hidden_size=cfg.shape.hidden_size, num_layers=cfg.shape.num_layers,
                max_position_embeddings=cfg.max_position_embeddings, weight_bytes=r.weight_bytes,
                target_modules=list(LORA_TARGETS), adapter_dtype=r.adapter_store.adapter_dtype))

    def Health(self, request: generate_pb2.HealthRequest,
               context: grpc.ServicerContext | None) -> generate_pb2.HealthResponse:
        if self.core.runner.device.type == "cuda":
            torch.zeros((2, 2), device=self.core.runner.device)
        return generate_pb2.HealthResponse()

    def ServiceDiscovery(self, request: generate_pb2.ServiceDiscoveryRequest,
                         context: grpc.ServicerContext | None) -> generate_pb2.ServiceDiscoveryResponse:
        urls = [f"unix://{self.core.options.uds_path}-{r}" for r in range(self.core.world)]
        return generate_pb2.ServiceDiscoveryResponse(urls=urls)

    def ClearCache(self, request: generate_pb2.ClearCacheRequest,
                   context: grpc.ServicerContext | None) -> generate_pb2.ClearCacheResponse:
        def clear() -> None:
            if request.HasField("id"):
                self.core.cache.pop(request.id, None)
            else:
                self.core.cache.clear()
        self.core.locked(clear)
        return generate_pb2.ClearCacheResponse()

    def FilterBatch(self, request: generate_pb2.FilterBatchRequest,
                    context: grpc.ServicerContext | None) -> generate_pb2.FilterBatchResponse:
        def run() -> generate_pb2.FilterBatchResponse:
            batch = self.core.pop(request.batch_id).filter(request.request_ids)
            if len(batch):
                self.core.cache[batch.id] = batch
            return generate_pb2.FilterBatchResponse(batch=batch.to_pb(), headroom=self.core.headroom())
        return self.core.locked(run)

    def Prefill(self, request: generate_pb2.PrefillRequest,
                context: grpc.ServicerContext | None) -> generate_pb2.PrefillResponse:
        return self.core.locked(lambda: self._prefill(request))

    def _prefill(self, request: generate_pb2.PrefillRequest) -> generate_pb2.PrefillResponse:
        """A request that fails validation or whose adapter cannot be loaded is refused alone (listed
        in `rejected`); its batch mates run. Only a broken batch (no requests, a reused id, an unknown
        cached batch) fails the whole call."""
        t0 = time.perf_counter_ns()
        if request.HasField("cached_batch") and request.batch.id == request.cached_batch.id:
            raise ValueError(f"the new batch reuses the id {request.batch.id} of the cached batch")
        batch, refused = Batch.admit_pb(request.batch, self.core.context())
        if batch is not None:
            unloadable = self.core.prepare(batch)
            refused.update(unloadable)
            batch = batch.without(unloadable)
        if refused and not self.refuse_per_request:
            rid, why = next(iter(refused.items()))
            raise ValueError(why if why.startswith(f"request {rid}:") else f"request {rid}: {why}")
        concat_ns = None
        if request.HasField("cached_batch"):
            cached = self.core.pop(request.cached_batch.id)
            c0 = time.perf_counter_ns()
            batch = Batch.concatenate([cached, batch]) if batch is not None else cached
            concat_ns = time.perf_counter_ns() - c0
        if batch is None:
            reply = generate_pb2.PrefillResponse(total_ns=time.perf_counter_ns() - t0,
                                                 headroom=self.core.headroom())
        else:
            reply = self.core.step_reply(generate_pb2.PrefillResponse, self.core.run_step(batch), t0,
                                         concat_ns)
        reply.rejected.extend(chameleon_pb2.RequestRejection(request_id=rid, reason=why)
                              for rid, why in refused.items())
        if refused:
            log.warning("requests refused", extra={"refused": {str(k): v for k, v in refused.items()}})
        return reply

    def Decode(self, request: generate_pb2.DecodeRequest,
               context: grpc.ServicerContext | None) -> generate_pb2.DecodeResponse:
        return self.core.locked(lambda: self._decode(request))

    def _decode(self, request: generate_pb2.DecodeRequest) -> generate_pb2.DecodeResponse:
        t0 = time.perf_counter_ns()
        if not request.batches:
            raise ValueError("Decode needs at least one batch")
        missing = [b.id for b in request.batches if b.id not in self.core.cache]
        if missing:
            raise ValueError(f"batches {missing} are not in the shard's cache")
        batches = [self.core.pop(b.id) for b in request.batches]
        concat_ns = None
        if len(batches) > 1:
            c0 = time.perf_counter_ns()
            batch = Batch.concatenate(batches)
            concat_ns = time.perf_counter_ns() - c0
        else:
            batch = batches[0]
        return self.core.step_reply(generate_pb2.DecodeResponse, self.core.run_step(batch), t0, concat_ns)

    def Warmup(self, request: generate_pb2.WarmupRequest,
               context: grpc.ServicerContext | None) -> generate_pb2.WarmupResponse:
        return self.core.locked(lambda: self._warmup(request))

    def _warmup(self, request: generate_pb2.WarmupRequest) -> generate_pb2.WarmupResponse:
        core, runner = self.core, self.core.runner
        core.cache.clear()
        release_pool(runner, core.adapter_manager)
        prefill = max(request.max_prefill_tokens, 1)
        activation = runner.measure_activation_bytes(prefill)
        free = core.agree_min(free_bytes_for_pool(core.options.memory, core.options.memory_fraction,
                                                  runner.weight_bytes))
        adapter_pages = core.self_region_pages(max(free - activation, 0) // runner.page_bytes)
        plan = plan_pool(free, activation, runner.page_bytes, adapter_pages)
        runner.allocate_pool(plan.num_pages)
        core.adapter_manager.set_pool(plan.num_pages, plan.kv_pages)
        core.adapter_manager.ensure_resident(sorted(core.adapter_manager.named), set(), set())
        self._exercise(request.batch, plan.kv_pages)
        log.info("warmup done", extra={"num_pages": plan.num_pages, "kv_pages": plan.kv_pages,
                                       "page_bytes": plan.page_bytes, "activation_bytes": activation})
        max_input = request.max_input_tokens if request.HasField("max_input_tokens") else \
            min(prefill, runner.config.max_position_embeddings - 1)
        max_total = request.max_total_tokens if request.HasField("max_total_tokens") else \
            min(runner.config.max_position_embeddings, plan.kv_pages * runner.block_size)
        return generate_pb2.WarmupResponse(
            max_supported_total_tokens=plan.kv_pages * runner.block_size, max_input_tokens=max_input,
            max_total_tokens=max_total, pool=pool_layout(plan, runner.block_size, runner.weight_bytes))

    def _exercise(self, pb: generate_pb2.Batch, kv_pages: int) -> None:
        """One prefill of the router's warmup batch on shard-assigned blocks, then drop it."""
        if not pb.requests:
            return
        counts = []
        for r in pb.requests:
            n = len(self.core.tokenizer(prompt_text(r), add_special_tokens=r.add_special_tokens)["input_ids"])
            counts.append(min(n, r.truncate) if r.truncate else n)
        runner = self.core.runner
        sized = warmup_batch_with_blocks(pb, counts, runner.block_size, kv_pages,
                                         runner.config.max_position_embeddings)
        if sized is not None:
            batch = Batch.from_pb(sized, self.core.context())
            self.core.prepare(batch)
            generate_step(self.core.env, batch)
