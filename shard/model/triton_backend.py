"""TritonBackend: the CUDA backend, our Triton kernels (shard.kernels) behind the backend seam.

What runs where:
- attention: decode-only batches through the paged decode kernel (K/V read straight from each row's
  block table, GQA heads sharing every tile); batches with prefill rows through the variable-length
  paged prefill kernel, every sequence (fresh prompt, chunk after cached context, decode row) causal
  over its keys in the pages (rope_store has written the new K/V there first);
- LoRA (one rank): the multi-LoRA SGMV shrink/expand kernels, one launch pair per (layer, module) for all
  the batch's adapters, heterogeneous ranks without padding, A/B read in place wherever the store keeps
  them (pool pages, or a copy for a tensor straddling non-adjacent pages): a kernel table holds, per
  adapter, the element offset of A and B from one anchor tensor of the adapters' dtype (raw device
  addresses; every allocation of a device lives in one address space). Tensor parallelism takes the
  torch LoRA paths (collectives between shrink and expand);
- flash-attn, only when it imports (optional; the GPU machines cannot build it): batches of fresh 16-bit
  prompts alone (no cached context, no decode rows) through its varlen kernel, the Triton kernels else;
- RMSNorm (with the residual add) and rotary + KV write: one fused kernel each (shard.model.triton_norm,
  shard.model.triton_rope);
- linears, embedding, sampler: TorchBackend's torch ops (cuBLAS serves the matmuls).
Decode CUDA graphs (shard.model.cuda_graphs) replay this backend's decode forward.

On CPU tensors it runs only under Triton's interpreter (TRITON_INTERPRET=1 set before shard.kernels is
first imported): that is how CI checks it against TorchBackend (tests/shard_model/test_triton_backend.py).
Importing this module does not import triton; constructing the backend does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING

import torch

from chameleon.core.memory import LORA_TARGETS
from shard.model.attention import AttentionMeta
from shard.model.backend import KV, TorchBackend

if TYPE_CHECKING:
    from shard.kernels.lora import Segments
    from shard.lora.store import LoraWeights

MODULE_INDEX = {m: i for i, m in enumerate(LORA_TARGETS)}


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_unavailable(device: torch.device) -> str | None:
    """Why the Triton backend cannot serve `device` (None: it can). CUDA needs a CUDA device present,
    triton importable and the interpreter off; CPU tensors need the interpreter (TRITON_INTERPRET=1)."""
    if device.type == "cuda" and interpreted():
        return "TRITON_INTERPRET=1 would run the kernels in the interpreter on a CUDA device"
    if device.type == "cuda" and not torch.cuda.is_available():  # e.g. fake CUDA tensors on a CPU machine
        return "no CUDA device is present"
    if device.type == "cpu" and not interpreted():
        return "on CPU the Triton kernels run only under TRITON_INTERPRET=1 (tests)"
    if device.type not in ("cuda", "cpu"):
        return f"no Triton kernels for {device.type}"
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton does not import ({exc})"
    return None


def load_flash_attn() -> Callable[..., torch.Tensor] | None:
    """flash_attn_varlen_func when flash-attn imports (any failure: a build for another torch/CUDA too)."""
    try:
        from flash_attn import flash_attn_varlen_func
    except Exception:  # optional: never a reason not to serve
        return None
    return flash_attn_varlen_func


@dataclass(frozen=True, slots=True)
class AdapterEntries:
    """One adapter's kernel-table entries: raw addresses and ranks per (layer, module) (0: absent)."""

    weights: LoraWeights       # kept alive: the addresses point into its tensors
    ptrs: torch.Tensor         # int64 [layers, modules, 2]: data_ptr of A and of B
    ranks: torch.Tensor        # int64 [layers, modules, 2]: rows of A, columns of B
    dtype: torch.dtype


def adapter_entries(weights: LoraWeights) -> AdapterEntries | None:
    """None when a tensor is not a contiguous matrix on the adapter's device or dtypes differ."""
    n_layers = len(weights.layers)
    ptrs = torch.zeros(n_layers, len(LORA_TARGETS), 2, dtype=torch.int64)
    ranks = torch.zeros(n_layers, len(LORA_TARGETS), 2, dtype=torch.int64)
    dtypes = {t.dtype for modules in weights.layers for ab in modules.values() for t in ab}
    if len(dtypes) != 1:
        return None
    for layer, modules in enumerate(weights.layers):
        for module, (a, b) in modules.items():
            if not (a.is_contiguous() and b.is_contiguous() and a.dim() == b.dim() == 2):
                return None
            ptrs[layer, MODULE_INDEX[module]] = torch.tensor([a.data_ptr(), b.data_ptr()])
            ranks[layer, MODULE_INDEX[module]] = torch.tensor([a.shape[0], b.shape[1]])
    return AdapterEntries(weights, ptrs, ranks, dtypes.pop())


@dataclass(slots=True)
class EntryCache:
    """AdapterEntries per adapter id, valid for one store version."""

    version: int = -1
    entries: dict[str, AdapterEntries | None] = field(default_factory=dict)

    def get(self, weights: LoraWeights, version: int) -> AdapterEntries | None:
        if version != self.version:
            self.version, self.entries = version, {}
        hit = self.entries.get(weights.adapter_id)
        if hit is None or hit.weights is not weights:
            hit = adapter_entries(weights)
            self.entries[weights.adapter_id] = hit
        return hit


def table_columns(entries: list[AdapterEntries], anchor: torch.Tensor) -> torch.Tensor | None:
    """int64 [4, layers, modules, n] on the host: A offsets, B offsets (elements from `anchor`), A ranks,
    B ranks of n adapters, in order. None when an address is not a whole number of elements away."""
    ptrs = torch.stack([e.ptrs for e in entries], dim=-1)    # [L, M, 2, n]
    ranks = torch.stack([e.ranks for e in entries], dim=-1)  # [L, M, 2, n]
    size = anchor.element_size()
    delta = torch.where(ptrs == 0, anchor.data_ptr(), ptrs) - anchor.data_ptr()
    if bool((delta % size != 0).any()):
        return None
    return torch.cat([(delta // size).permute(2, 0, 1, 3), ranks.permute(2, 0, 1, 3)])


class TritonLora:
    """One forward's multi-LoRA through the SGMV kernels (shard.lora.kernels.LoraKernel): the batch's
    adapters as kernel-table columns on the device, the token rows grouped into one segment per adapter."""

    def __init__(self, kernels: ModuleType, anchor: torch.Tensor, columns: torch.Tensor, scales: torch.Tensor,
                 segs: Segments, max_rank: int) -> None:
        self.kernels, self.anchor, self.segs, self.max_rank = kernels, anchor, segs, max_rank
        self.a_off, self.b_off = columns[0], columns[1]                               # [L, M, n] int64
        self.ranks, self.b_ranks = columns[2].to(torch.int32), columns[3].to(torch.int32)
        self.scales = scales

    def table(self, layer: int, module: str) -> object:
        m = MODULE_INDEX[module]
        return self.kernels.LoraTable(self.anchor, self.a_off[layer, m], self.b_off[layer, m],
                                      self.ranks[layer, m], self.scales, self.max_rank,
                                      self.b_ranks[layer, m], self.max_rank)

    def apply(self, layer: int, module: str, x: torch.Tensor, y: torch.Tensor) -> bool:
        """y [T, N] += LoRA(x [T, K]) for every segment; False (nothing done) when x or y do not fit."""
        if x.stride(-1) != 1 or y.stride(-1) != 1 or x.dtype != y.dtype or x.shape[0] != y.shape[0]:
            return False
        table = self.table(layer, module)
        # shrink writes, and expand reads, only columns < rank of segment rows: no zero fill needed
        xa = torch.empty(x.shape[0], self.max_rank, dtype=torch.float32, device=x.device)
        self.kernels.sgmv_expand(self.kernels.sgmv_shrink(x, table, self.segs, xa), table, self.segs, y,
                                 y.shape[1])
        return True


def row_segments(kernels: ModuleType, rows: list[list[int]], device: torch.device) -> Segments:
    """Segment s = token rows rows[s] (adapter slot s), in order; built on the host, one copy each."""
    starts, pos = [], 0
    for r in rows:
        starts.append(pos)
        pos += len(r)
    flat = [i for r in rows for i in r]
    return kernels.Segments(torch.tensor(flat, dtype=torch.int64).to(device),
                            torch.tensor(starts, dtype=torch.int32).to(device),
                            torch.tensor([len(r) for r in rows], dtype=torch.int32).to(device),
                            torch.arange(len(rows), dtype=torch.int32).to(device),
                            max((len(r) for r in rows), default=0))


@dataclass(frozen=True, slots=True)
class VarlenSeqs:
    """The sequences of a batch with prefill rows, for the paged varlen kernel."""

    cu: torch.Tensor      # [B + 1] int32 first row of each sequence
    ctx: torch.Tensor     # [B] int64 keys of each sequence (its context after this step)
    tables: torch.Tensor  # [B, max_blocks] int64 block tables
    max_q: int


def varlen_seqs(meta: AttentionMeta, num_rows: int) -> VarlenSeqs:
    """Prefill sequences are meta.prefills; every other row is a decode sequence of its own."""
    spans = {p.start: p.query_len for p in meta.prefills}
    starts, lens, row = [], [], 0
    while row < num_rows:
        q = spans.get(row, 1)
        starts.append(row)
        lens.append(q)
        row += q
    device = meta.row_lens.device
    last = torch.tensor([s + q - 1 for s, q in zip(starts, lens, strict=True)], dtype=torch.int64).to(device)
    cu = torch.tensor([*starts, num_rows], dtype=torch.int32).to(device)
    return VarlenSeqs(cu, meta.row_lens[last], meta.row_blocks[last], max(lens))


class TritonBackend(TorchBackend):
    """Triton attention and LoRA kernels; TorchBackend's torch ops for everything else."""

    name = "triton"

    def __init__(self, flash: bool = False) -> None:
        """`flash`: use flash-attn for fresh-prompt batches where it imports (select_backend: on CUDA)."""
        from shard.kernels import attention, lora  # imports triton (decorates the kernels)
        from shard.model import triton_norm, triton_rope

        self.attn, self.lora_kernels, self.norm, self.rope = attention, lora, triton_norm, triton_rope
        self.flash = load_flash_attn() if flash else None
        self.entry_cache = EntryCache()
        self._anchors: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self._varlen: tuple[AttentionMeta, VarlenSeqs] | None = None

    def anchor(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """A one-element tensor, fixed for the backend's life, from which kernel tables count offsets."""
        key = (torch.device(device), dtype)
        if key not in self._anchors:
            self._anchors[key] = torch.zeros(1, dtype=dtype, device=device)
        return self._anchors[key]

    def graph_lora(self, anchor: torch.Tensor, columns: torch.Tensor, scales: torch.Tensor,
                   rows: torch.Tensor, seg_len: torch.Tensor, max_rank: int) -> TritonLora:
        """The LoRA kernel of a captured decode graph (shard.model.cuda_graphs): row i is segment i of
        length seg_len[i] (1: adapter row, 0: base or padding) and kernel-table column i; every argument
        is a static device buffer the graph reads at replay."""
        rows32 = rows.to(torch.int32)
        segs = self.lora_kernels.Segments(rows, rows32, seg_len, rows32, 1)
        return TritonLora(self.lora_kernels, anchor, columns, scales, segs, max_rank)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        if self.norm.fits(x, weight):
            return self.norm.rms_norm(x, weight, eps)
        return super().rms_norm(x, weight, eps)

    def add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        if self.norm.fits(x, weight) and self.norm.fits(residual, weight) and residual.shape == x.shape:
            return self.norm.rms_norm(x, weight, eps, residual), residual  # the sum written into residual
        return super().add_rms_norm(x, residual, weight, eps)

    def rope_store(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
                   sin: torch.Tensor, kv: KV, meta: AttentionMeta) -> tuple[torch.Tensor, torch.Tensor]:
        """q and k rotated in place, the rotated k and v written into their slots, in one kernel."""
        if self.rope.fits(q, k, v, cos, sin, kv[0], kv[1]):
            self.rope.rope_store(q, k, v, cos, sin, meta.slots, kv[0], kv[1])
            return q, k
        return super().rope_store(q, k, v, cos, sin, kv, meta)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv: KV,
                  meta: AttentionMeta) -> torch.Tensor:
        k_cache, v_cache = kv
        if not meta.prefills:  # decode only: every row is a decode row, in order
            o = self.attn.paged_decode_attention(q, k_cache, v_cache, meta.decode_blocks, meta.decode_lens)
            return o.reshape(q.shape[0], -1)
        if self._varlen is None or self._varlen[0] is not meta:  # once per forward, shared by the layers
            self._varlen = (meta, varlen_seqs(meta, q.shape[0]))
        seqs = self._varlen[1]
        if self.flash is not None and q.dtype in (torch.float16, torch.bfloat16) and \
                all(p.blocks is None for p in meta.prefills) and \
                sum(p.query_len for p in meta.prefills) == q.shape[0]:  # fresh prompts only: their own K/V
            o = self.flash(q, k, v, seqs.cu, seqs.cu, seqs.max_q, seqs.max_q, causal=True)
            return o.reshape(q.shape[0], -1)
        o = self.attn.prefill_attention(q, k_cache, v_cache, seqs.cu, seqs.max_q, seqs.ctx, seqs.tables)
        return o.reshape(q.shape[0], -1)

    def lora_kernel(self, weights: list[LoraWeights], rows: list[slice | torch.Tensor], num_tokens: int,
                    version: int, device: torch.device, dtype: torch.dtype) -> TritonLora | None:
        """None (torch paths) when an adapter's tensors are not contiguous matrices of one dtype shared by
        the whole batch."""
        entries = [self.entry_cache.get(w, version) for w in weights]
        if any(e is None for e in entries) or len({e.dtype for e in entries}) != 1:  # type: ignore[union-attr]
            return None
        anchor = self.anchor(device, entries[0].dtype)  # type: ignore[union-attr]
        columns = table_columns(entries, anchor)  # type: ignore[arg-type]
        if columns is None:
            return None
        host_rows = [list(range(num_tokens))[r] if isinstance(r, slice) else r.tolist() for r in rows]
        scales = torch.tensor([w.scale for w in weights], dtype=torch.float32).to(device)
        return TritonLora(self.lora_kernels, anchor, columns.to(device), scales,
                          row_segments(self.lora_kernels, host_rows, device), max(w.rank for w in weights))
