"""Decode CUDA graphs: the Triton backend's decode forward captured once per batch-size bucket, replayed.

A decode step of a large model is hundreds of small kernel launches; a graph replays them in one. At
Warmup (ModelRunner.allocate_pool: the graphs point at the pool's KV pages) every bucket of
`graph_buckets(max_batch)` is captured twice, without and with LoRA, largest first, sharing one memory
pool. A decode batch of n <= max_batch sequences is padded to the smallest bucket >= n: padding rows
read and write page 0 (reserved, never a sequence's), with context 1 and no adapter; the logits of the
first n rows are returned. Everything a replay reads is in static device buffers filled before it: the
tokens, positions, KV slots, block tables (width: max_position_embeddings / block_size), context lengths,
and for LoRA one kernel-table column per row (the row's adapter's A/B offsets and ranks per (layer,
module), a segment of length 1, 0 for base rows), so any mix of adapters replays the same graph.

Used only where it is exact and safe: CUDA, the triton backend, one rank (collectives stay eager),
`max_batch` > 0. A batch it does not serve (prefill rows, too many rows, a table too wide, an adapter
whose tensors the kernels cannot address, a rank above `max_rank`) runs eagerly. The pure parts (buckets,
padding, eligibility) are checked on CPU; the capture needs a GPU (tests/gpu).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from chameleon.core.memory import LORA_TARGETS
from shard.model.attention import AttentionMeta

if TYPE_CHECKING:
    from shard.model.triton_backend import TritonBackend

log = logging.getLogger("shard.cuda_graphs")
DEFAULT_MAX_BATCH = 64
PAD_SLOT = 0  # page 0, offset 0: reserved, never a sequence's KV
MAX_GRAPH_RANK = 128


class DecodeBatch(Protocol):
    """What the graphs read of a shard.model.runner.ForwardBatch (named here: the runner imports us)."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    slots: torch.Tensor
    query_lens: list[int]
    context_lens: list[int]
    block_tables: list[list[int]]
    adapter_ids: list[str | None]


# the runner (shard.model.runner.ModelRunner, which imports this module): device, dtype, block_size,
# shape, config, dist, backend, model, pool, adapter_store
Runner = Any


def graph_buckets(max_batch: int) -> tuple[int, ...]:
    """Batch sizes captured: 1, 2, 4, then every multiple of 8 below max_batch, and max_batch itself."""
    if max_batch <= 0:
        return ()
    sizes = {b for b in (1, 2, 4) if b < max_batch} | set(range(8, max_batch, 8)) | {max_batch}
    return tuple(sorted(sizes))


def choose_bucket(n: int, buckets: tuple[int, ...]) -> int | None:
    """The smallest bucket holding n rows (None: n is 0 or above every bucket)."""
    return next((b for b in buckets if b >= n), None) if n > 0 else None


def graphs_unavailable(device: torch.device, backend: str, world_size: int, max_batch: int) -> str | None:
    """Why no decode graphs are captured (None: they are)."""
    if max_batch <= 0:
        return "disabled (--cuda-graph-max-batch 0)"
    if device.type != "cuda":
        return f"not a CUDA device ({device})"
    if backend != "triton":
        return f"the {backend} backend (graphs replay the triton backend's kernels)"
    if world_size > 1:
        return "tensor parallelism (collectives run eagerly)"
    return None


@dataclass(frozen=True, slots=True)
class PaddedDecode:
    """A decode batch padded to `bucket` rows, as host tensors ready to copy into the static buffers."""

    n: int                      # real rows (the first n)
    bucket: int
    ids: torch.Tensor           # [4, bucket] int64: tokens, positions, slots, context lengths
    tables: torch.Tensor        # [bucket, width] int64 block tables (0-padded)
    adapters: list[str | None]  # per real row


def pad_decode(fb: DecodeBatch, buckets: tuple[int, ...], width: int) -> PaddedDecode | None:
    """The batch padded to its bucket; None when it is not a pure decode batch that fits."""
    n = len(fb.query_lens)
    bucket = choose_bucket(n, buckets)
    if bucket is None or any(q != 1 for q in fb.query_lens):
        return None
    if any(len(t) > width for t in fb.block_tables):
        return None
    ids = torch.zeros(4, bucket, dtype=torch.int64)
    ids[0, :n], ids[1, :n], ids[2, :n] = fb.input_ids, fb.positions, fb.slots
    ids[1, n:], ids[2, n:], ids[3, n:] = 0, PAD_SLOT, 1
    ids[3, :n] = torch.tensor(fb.context_lens, dtype=torch.int64)
    tables = torch.zeros(bucket, width, dtype=torch.int64)
    for i, t in enumerate(fb.block_tables):
        tables[i, :len(t)] = torch.tensor(t, dtype=torch.int64)
    return PaddedDecode(n, bucket, ids, tables, list(fb.adapter_ids))


@dataclass(frozen=True, slots=True)
class Ready:
    """A batch whose inputs are in the static buffers: which graph replays it."""

    n: int
    bucket: int
    lora: bool


class StaticInputs:
    """The device buffers every graph reads (views [:bucket] of max_batch rows)."""

    def __init__(self, runner: Runner, max_batch: int, width: int) -> None:
        dev, n_layers = runner.device, runner.shape.num_layers
        self.ids = torch.zeros(4, max_batch, dtype=torch.int64, device=dev)
        self.ids[3] = 1
        self.tables = torch.zeros(max_batch, width, dtype=torch.int64, device=dev)
        self.rows = torch.arange(max_batch, dtype=torch.int64, device=dev)
        self.lora = torch.zeros(4, n_layers, len(LORA_TARGETS), max_batch, dtype=torch.int64, device=dev)
        self.seg_len = torch.zeros(max_batch, dtype=torch.int32, device=dev)
        self.scales = torch.zeros(max_batch, dtype=torch.float32, device=dev)

    def meta(self, bucket: int, block_size: int) -> AttentionMeta:
        slots = self.ids[2, :bucket]
        lens, tables = self.ids[3, :bucket], self.tables[:bucket]
        return AttentionMeta(slots=slots, slot_pages=slots // block_size, slot_offsets=slots % block_size,
                             decode_rows=self.rows[:bucket], decode_blocks=tables,
                             decode_mask=torch.empty(0, device=slots.device), decode_lens=lens, prefills=(),
                             row_blocks=tables, row_lens=lens)


class DecodeGraphs:
    """Captured decode graphs of one runner (one pool). `run(fb)` replays one or returns None."""

    def __init__(self, runner: Runner, buckets: tuple[int, ...]) -> None:
        self.runner, self.buckets = runner, buckets
        self.backend: TritonBackend = runner.backend  # type: ignore[assignment]
        self.width = -(-runner.config.max_position_embeddings // runner.block_size)
        self.static = StaticInputs(runner, buckets[-1], self.width)
        self.anchor = self.backend.anchor(runner.device, runner.dtype)
        self.graphs: dict[tuple[int, bool], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    @classmethod
    def capture(cls, runner: Runner, max_batch: int) -> DecodeGraphs | None:
        why = graphs_unavailable(runner.device, runner.backend.name, runner.dist.world_size, max_batch)
        if why is not None:
            log.info("decode CUDA graphs off: %s", why)
            return None
        graphs = cls(runner, graph_buckets(max_batch))
        try:
            graphs.capture_all()
        except Exception as exc:  # a capture that fails leaves eager decode working: serve without graphs
            log.warning("decode CUDA graphs off: capture failed (%s: %s)", type(exc).__name__, exc)
            return None
        return graphs

    def capture_all(self) -> None:
        pool = torch.cuda.graph_pool_handle()
        for bucket in reversed(self.buckets):
            for lora in (True, False):
                self.graphs[(bucket, lora)] = self._capture(bucket, lora, pool)
        log.info("decode CUDA graphs captured", extra={"buckets": list(self.buckets)})

    def _forward(self, bucket: int, lora: bool) -> torch.Tensor:
        from shard.lora.kernels import ConcatCache, LoraBatch

        r, s = self.runner, self.static
        batch = None
        if lora:
            kernel = self.backend.graph_lora(self.anchor, s.lora[..., :bucket], s.scales[:bucket],
                                             s.rows[:bucket], s.seg_len[:bucket], MAX_GRAPH_RANK)
            batch = LoraBatch([], bucket, r.dist, ConcatCache(), False, kernel)
        return self.backend.run(r.model, s.ids[0, :bucket], s.ids[1, :bucket], r.pool.kv,
                                s.meta(bucket, r.block_size), batch, None)

    def _capture(self, bucket: int, lora: bool, pool: object) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        stream = torch.cuda.Stream(self.runner.device)
        stream.wait_stream(torch.cuda.current_stream(self.runner.device))
        with torch.inference_mode(), torch.cuda.stream(stream):
            self._forward(bucket, lora)  # compiles the kernels; nothing may compile during the capture
        torch.cuda.current_stream(self.runner.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: CUDA calls of other threads (the gRPC server's) do not break this thread's capture
        with torch.inference_mode(), torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            logits = self._forward(bucket, lora)
        return graph, logits

    def run(self, fb: DecodeBatch) -> torch.Tensor | None:
        """Logits [n, vocab] (float32, a copy) of a decode batch it serves, else None (run eagerly)."""
        ready = self.prepare(fb)
        if ready is None:
            return None
        graph, logits = self.graphs[(ready.bucket, ready.lora)]
        graph.replay()
        return logits[:ready.n].clone()

    def run_uncaptured(self, fb: DecodeBatch) -> torch.Tensor | None:
        """What a replay computes, run eagerly from the same static buffers (CPU checks of the graph's
        body, padding and per-row LoRA columns included)."""
        ready = self.prepare(fb)
        if ready is None:
            return None
        with torch.inference_mode():
            return self._forward(ready.bucket, ready.lora)[:ready.n].clone()

    def prepare(self, fb: DecodeBatch) -> Ready | None:
        """Fill the static buffers for `fb` (None: a batch the graphs do not serve; nothing written)."""
        padded = pad_decode(fb, self.buckets, self.width)
        if padded is None:
            return None
        lora = any(a is not None for a in padded.adapters)
        if lora and not self._fill_lora(padded):
            return None
        s = self.static
        s.ids[:, :padded.bucket].copy_(padded.ids)
        s.tables[:padded.bucket].copy_(padded.tables)
        return Ready(padded.n, padded.bucket, lora)

    def _fill_lora(self, padded: PaddedDecode) -> bool:
        """The per-row kernel-table columns; False when an adapter cannot be served by the graph."""
        store = self.runner.adapter_store
        names = sorted({a for a in padded.adapters if a is not None})
        weights = [store.get(a) for a in names]
        entries = [self.backend.entry_cache.get(w, store.version) for w in weights]
        if any(e is None or e.dtype != self.anchor.dtype for e in entries) or \
                max(w.rank for w in weights) > MAX_GRAPH_RANK:
            return False
        from shard.model.triton_backend import table_columns

        columns = table_columns(entries, self.anchor)  # type: ignore[arg-type]
        if columns is None:
            return False
        slot = {a: i for i, a in enumerate(names)}
        idx = torch.tensor([slot.get(a, 0) if a is not None else 0 for a in padded.adapters]
                           + [0] * (padded.bucket - padded.n))
        used = torch.tensor([a is not None for a in padded.adapters] + [False] * (padded.bucket - padded.n))
        scales = torch.tensor([w.scale for w in weights], dtype=torch.float32)[idx] * used
        s, b = self.static, padded.bucket
        s.lora[..., :b].copy_(columns[..., idx])
        s.seg_len[:b].copy_(used.to(torch.int32))
        s.scales[:b].copy_(scales)
        return True
