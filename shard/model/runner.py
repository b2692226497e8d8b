"""ModelRunner: one forward over a mixed prefill/decode batch, plus the pool and adapter store.

The server builds a ForwardBatch from its Batch objects (slots from the router's blocks) and calls
`forward`; everything device-side (weights, the page pool, KV, adapters) lives behind this class.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from chameleon.core.memory import ModelShape
from chameleon.core.memory import page_bytes as shape_page_bytes
from shard.lora.kernels import ConcatCache, LoraBatch
from shard.lora.store import AdapterStore
from shard.model.attention import AttentionMeta
from shard.model.backend import Backend, TorchBackend
from shard.model.config import ModelConfig
from shard.model.cpu_backend import CpuKernelBackend
from shard.model.cpu_kernels import CpuKernels
from shard.model.cuda_graphs import DecodeGraphs
from shard.model.dist import DistContext
from shard.model.llama import LlamaForCausalLM
from shard.model.loader import load_weights
from shard.model.pool import ShardPagePool, rebase_view


@dataclass(frozen=True, slots=True)
class ForwardBatch:
    """One step. Sequences appear in the same order in every per-sequence list.

    Invariants: len(input_ids) == len(positions) == len(slots) == sum(query_lens);
    context_lens[i] >= query_lens[i]; the new tokens of sequence i sit at positions
    context_lens[i]-query_lens[i] .. context_lens[i]-1; block_tables[i] covers context_lens[i] tokens;
    slots[t] = block_tables[i][pos // block_size] * block_size + pos % block_size.
    """

    input_ids: torch.Tensor        # [T] int64, the NEW tokens of every sequence, concatenated
    positions: torch.Tensor        # [T] int64, absolute position of each new token
    slots: torch.Tensor            # [T] int64, KV slot of each new token = block*block_size + offset
    query_lens: list[int]          # new tokens per sequence (prefill: prompt length, decode: 1)
    context_lens: list[int]        # tokens in KV after this step, per sequence (incl. new ones)
    block_tables: list[list[int]]  # page ids of each sequence (its KV blocks, in order)
    adapter_ids: list[str | None]  # per sequence; None = base model. Must be resident in the store.
    all_logits: list[bool]         # per sequence: also return logits of every new token (prefill logprobs)

    @classmethod
    def build(cls, input_ids: list[list[int]], context_lens: list[int], block_tables: list[list[int]],
              block_size: int, adapter_ids: list[str | None] | None = None,
              all_logits: list[bool] | None = None) -> ForwardBatch:
        """Convenience constructor: input_ids[i] are sequence i's new tokens, which end at
        context_lens[i]; positions and slots are computed from the block tables."""
        n = len(input_ids)
        ids, positions, slots = [], [], []
        for toks, ctx, table in zip(input_ids, context_lens, block_tables, strict=True):
            for pos in range(ctx - len(toks), ctx):
                positions.append(pos)
                slots.append(table[pos // block_size] * block_size + pos % block_size)
            ids += toks
        return cls(input_ids=torch.tensor(ids, dtype=torch.int64), positions=torch.tensor(positions),
                   slots=torch.tensor(slots, dtype=torch.int64), query_lens=[len(t) for t in input_ids],
                   context_lens=list(context_lens), block_tables=[list(t) for t in block_tables],
                   adapter_ids=list(adapter_ids) if adapter_ids is not None else [None] * n,
                   all_logits=list(all_logits) if all_logits is not None else [False] * n)


@dataclass(frozen=True, slots=True)
class ForwardOutput:
    last_logits: torch.Tensor                  # [S, vocab] float32, logits of each sequence's last token
    all_logits: list[torch.Tensor | None]      # per sequence: [query_len, vocab] where requested


BACKENDS = ("torch", "cpu-kernels", "triton")
DTYPE_NAMES = ("float32", "bfloat16", "float16")


def resolve_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """The weight and KV dtype `--dtype NAME` selects on `device`: "auto" is bfloat16 on CUDA (half the
    bytes a decode step reads, float32's range) and float32 elsewhere (the CPU C kernels' dtype)."""
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; one of auto, {', '.join(DTYPE_NAMES)}")
    return getattr(torch, name)


def select_backend(device: torch.device, choice: str | None = None) -> Backend:
    """The backend of a runner, chosen once: `choice` ("torch" | "cpu-kernels" | "triton") or, None: on
    CUDA the Triton kernels (shard.model.triton_backend) when triton imports, else torch ops; on CPU the C
    kernels when they load (CHAMELEON_CPU_KERNELS unset or on, gcc and AVX2/FMA present), else torch ops.
    "triton" on CPU needs TRITON_INTERPRET=1 (the interpreter: tests)."""
    if choice not in (None, *BACKENDS):
        raise ValueError(f"unknown backend {choice!r}; one of {', '.join(BACKENDS)}")
    if choice == "triton" or (choice is None and device.type == "cuda"):
        from shard.model import triton_backend  # imports no triton until the backend is built

        why = triton_backend.triton_unavailable(device)
        if why is None:
            return triton_backend.TritonBackend(flash=device.type == "cuda")
        if choice == "triton":
            raise ValueError(f"the triton backend is unavailable: {why}")
    if choice == "torch" or device.type != "cpu":
        if choice == "cpu-kernels":
            raise ValueError(f"the cpu-kernels backend runs on CPU, not {device}")
        return TorchBackend()
    kernels = CpuKernels.load()
    if kernels is None:
        if choice == "cpu-kernels":
            raise ValueError("the cpu-kernels backend is unavailable (disabled, no gcc, or no AVX2/FMA)")
        return TorchBackend()
    return CpuKernelBackend(kernels)


class ModelRunner:
    """Owns the model (this rank's shard), the page pool and the AdapterStore (`self.adapter_store`).

    Attributes: config (ModelConfig), shape (chameleon.core.memory.ModelShape), dtype, device, dist,
    block_size, weight_bytes (this rank's parameter bytes), page_bytes (one pool page on this rank),
    vocab_size, pool (ShardPagePool | None), num_pages (0 until allocate_pool), backend (shard.model.backend.
    Backend, chosen once by `select_backend`; `backend=` names one), packed_layers (linears the backend
    re-laid for its kernels at load; 0 for torch ops or off float32).
    `lora_path` (None | "segment" | "gather" | "kernel") forces a LoRA path; None applies the measured rule.
    `adapter_dtype` ("auto" | "model"): adapter storage policy (chameleon.core.memory.adapter_storage_dtype).
    `cuda_graph_max_batch` (0: off): decode CUDA graphs for batches up to it, captured by `allocate_pool`
    (`graphs`, shard.model.cuda_graphs.DecodeGraphs; None where they do not apply: CPU, torch backend, TP).
    """

    def __init__(self, model_dir: str | Path, *, dtype: torch.dtype, device: str | torch.device,
                 dist: DistContext, num_pages: int | None = None, block_size: int = 16,
                 adapter_dtype: str = "auto", backend: str | None = None,
                 cuda_graph_max_batch: int = 0) -> None:
        self.config = ModelConfig.from_model_dir(model_dir)
        self.shape: ModelShape = self.config.shape
        self.dtype, self.device, self.dist, self.block_size = dtype, torch.device(device), dist, block_size
        self.backend = select_backend(self.device, backend)
        self.model = LlamaForCausalLM(self.config, dist, dtype, self.device, self.backend)
        load_weights(self.model, model_dir)
        self.model.eval()
        self.backend.prepare(self.model)  # e.g. the C kernels' panel layout
        self.packed_layers = self.backend.packed_layers
        self.weight_bytes = self.backend.weight_bytes(self.model)
        dtype_bytes = torch.empty((), dtype=dtype).element_size()
        self.page_bytes = shape_page_bytes(self.shape, block_size, dtype_bytes, dist.world_size, dist.rank)
        self.vocab_size = self.shape.vocab_size
        self.graphs: DecodeGraphs | None = None
        self.pool = None
        self.adapter_store = AdapterStore(self.shape, dtype, self.device, dist, block_size, lambda: self.pool,
                                     adapter_dtype)
        self.lora_path: str | None = None
        self._concat = ConcatCache()
        self.cuda_graph_max_batch = cuda_graph_max_batch  # 0: no decode CUDA graphs
        if num_pages is not None:
            self.allocate_pool(num_pages)

    @property
    def pool(self) -> ShardPagePool | None:
        return self._pool

    @pool.setter
    def pool(self, pool: ShardPagePool | None) -> None:
        """Any change of pool drops the decode graphs (they point at the old pool's pages; their memory is
        freed with them, before Warmup measures free memory); allocate_pool captures new ones."""
        self._pool, self.graphs = pool, None

    @property
    def num_pages(self) -> int:
        return 0 if self.pool is None else self.pool.num_pages

    def allocate_pool(self, num_pages: int) -> None:
        """(Re)allocate the pool of `num_pages` pages; page 0 is reserved (liveness). Refused while
        adapters live in pages of the current pool (offload them first)."""
        if any(info.pages for info in self.adapter_store.resident()):
            raise RuntimeError("adapters still occupy pool pages; offload them before re-allocating the pool")
        self.pool = None
        self.pool = ShardPagePool(self.shape, num_pages, self.block_size, self.dtype, self.device,
                             self.dist.world_size, self.dist.rank)
        self.graphs = DecodeGraphs.capture(self, self.cuda_graph_max_batch)  # None where they do not apply

    def resize_pool(self, num_pages: int) -> int:
        """Keep pool pages [0, num_pages) allocated (shard.model.pool: elastic segments); returns the bytes
        released (negative when grown). The caller checks that nothing lives in released pages."""
        if self.pool is None:
            raise RuntimeError("allocate_pool() before resize_pool()")

        moved = False

        def move(old: torch.Tensor, new: torch.Tensor) -> None:  # CUDA: views into the buffer follow it
            nonlocal moved
            self.adapter_store.rebase(lambda t: rebase_view(t, old, new))
            self._concat = ConcatCache()
            self.graphs, moved = None, True  # captured graphs read the old buffer's addresses

        released = self.pool.resize(num_pages, move)
        if moved:
            self.graphs = DecodeGraphs.capture(self, self.cuda_graph_max_batch)
        return released

    @torch.inference_mode()
    def forward(self, fb: ForwardBatch) -> ForwardOutput:
        """Run one step: writes the new tokens' K/V into their slots, returns full-vocab logits
        (gathered on every rank). Raises AdapterError if an adapter id is not resident."""
        if self.pool is None:
            raise RuntimeError("allocate_pool() before forward()")
        if not (len(fb.input_ids) == len(fb.positions) == len(fb.slots) == sum(fb.query_lens)):
            raise ValueError("ForwardBatch: input_ids, positions and slots must hold sum(query_lens) tokens")
        dev = self.device
        if not fb.query_lens:
            empty = torch.empty(0, self.vocab_size, dtype=torch.float32, device=dev)
            return ForwardOutput(last_logits=empty, all_logits=[])
        replayed = self.graphs.run(fb) if self.graphs is not None else None  # decode CUDA graph
        if replayed is not None:
            return ForwardOutput(last_logits=replayed, all_logits=[replayed[i:i + 1] if want else None
                                                                   for i, want in enumerate(fb.all_logits)])
        lora = LoraBatch.build(fb.adapter_ids, fb.query_lens, self.adapter_store, self.dist, self._concat,
                               dev, self.backend.lora_kernel, self.lora_path)
        slots = fb.slots.to(dev)
        meta = AttentionMeta.build(slots, fb.query_lens, fb.context_lens, fb.block_tables,
                                   self.block_size, dev, self.dtype)
        rows, last, spans, start = [], [], [], 0  # rows whose logits are computed; per-seq indexes into them
        for q, want_all in zip(fb.query_lens, fb.all_logits, strict=True):
            spans.append((len(rows), len(rows) + q) if want_all else None)
            rows += range(start, start + q) if want_all else [start + q - 1]
            last.append(len(rows) - 1)
            start += q
        every_row = len(rows) == start  # decode: all rows, in order; no gather needed
        wanted = None if every_row else torch.tensor(rows, dtype=torch.int64, device=dev)
        logits = self.backend.run(self.model, fb.input_ids.to(dev), fb.positions.to(dev), self.pool.kv, meta,
                                  lora, wanted)
        last_logits = logits if len(last) == len(rows) else logits[torch.tensor(last, device=dev)]
        return ForwardOutput(last_logits=last_logits,
                             all_logits=[logits[sp[0]:sp[1]] if sp else None for sp in spans])

    def measure_activation_bytes(self, max_prefill_tokens: int) -> int:
        """Peak extra bytes a forward of `max_prefill_tokens` prompt tokens needs (for Warmup sizing).

        CUDA: measured (peak allocated during a real forward over a scratch pool). CPU has no allocator
        statistics: an upper estimate of the live tensors of one layer plus the logits, with the
        O(T^2) attention scores of the math kernel, times 2 for allocator slack.
        """
        if self.device.type == "cuda":
            return self._measure_cuda(max_prefill_tokens)
        s, t = self.shape, max_prefill_tokens
        w, dtype_bytes = self.dist.world_size, torch.empty((), dtype=self.dtype).element_size()
        per_token = 6 * s.hidden_size + 2 * (s.num_heads + 2 * s.num_kv_heads) * s.head_dim // w \
            + 4 * s.intermediate_size // w
        scores = s.num_heads * t * t * 4 // w
        return 2 * (t * per_token * dtype_bytes + scores + s.vocab_size * 4 * 2)

    def _measure_cuda(self, tokens: int) -> int:
        """Peak bytes allocated above the weights and a scratch pool during one forward of `tokens` prompt
        tokens. The scratch pool and the activations are released to the device afterwards (empty_cache):
        the caching allocator would otherwise keep their blocks reserved, and the caller's `mem_get_info`
        would count the activations a second time."""
        blocks = -(-tokens // self.block_size)
        saved = self.pool
        self.pool = ShardPagePool(self.shape, blocks + 1, self.block_size, self.dtype, self.device,
                             self.dist.world_size, self.dist.rank)
        try:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            fb = ForwardBatch.build([[0] * tokens], [tokens], [list(range(1, blocks + 1))], self.block_size)
            self.forward(fb)
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - base
        finally:
            self.pool = saved
            torch.cuda.empty_cache()  # the scratch pool and the activations' cached blocks go back


def timed_forward(runner: ModelRunner, fb: ForwardBatch) -> tuple[ForwardOutput, float]:
    """forward plus its wall time in seconds (synchronised on CUDA); for benchmarks."""
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
    start = time.perf_counter()
    out = runner.forward(fb)
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
    return out, time.perf_counter() - start
