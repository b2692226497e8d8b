"""Batched multi-LoRA in pure torch: y += (scale * (x @ A.T)) @ B.T per token, with each token's own
adapter (scale: the adapter's LoRA scaling; A and B may be stored in 16 bits under a float32 model, see
shard.lora.store: the torch paths then upcast them to the activation dtype per use, exactly).

Two paths, both exact (base rows get no LoRA contribution at all):
- segment path (SGMV-like): tokens grouped by adapter, one (A, B) matmul pair per segment; reads each
  adapter once; cost grows with the number of segments (Python + kernel launch per segment).
- gather path (BGMV-like, CPU friendly): per module, the batch's adapters are concatenated along r
  (A_cat [sum_r, in], B_cat [out, sum_r], cached across steps while the batch's adapter set is
  unchanged, upcast to the activation dtype); every token multiplies A_cat, a mask keeps only its own
  adapter's r columns (holding that adapter's scale, 0 elsewhere), one matmul with B_cat adds the
  result. Two matmuls whatever the number of adapters, at the cost of (adapters - 1)x wasted FLOPs per
  token: the right choice when tokens per segment are few (decode).
Rule (SmolLM2 fp32 on CPU, decode batch 8, steps interleaved in one process: 8 adapters of sum(r) 304
took 258 ms by segments vs 359 ms gathered, 4 adapters of sum(r) 120 took 149 vs 138 ms, base 111-174
ms): the gather path wastes T x sum(r) - sum(t_k x r_k) rank-rows of compute; the segment path pays a
fixed overhead per segment worth about GATHER_WASTE_PER_SEGMENT rank-rows (per-op overhead x FLOP rate
/ 2 x (in + out)). Gather when more than one adapter is in the batch, the rank is alone (world_size 1)
and the waste is below that overhead x segments: a few small-rank adapters in a decode batch gather;
many or large adapters, and prefill, go by segments.
- kernel path: the backend's LoRA kernel (shard.model.backend.Backend.lora_kernel; on CPU float32, world
  size 1, segments of at most MAX_SEGMENT_ROWS rows, the C kernel of shard.lora.cpu_bgmv) does all
  segments of one (layer, module) in one call, streaming each adapter once; taken whenever the backend
  has one for the batch (unless a path is forced), the torch paths are its fallback (torch backend,
  other dtypes/devices, segments over MAX_SEGMENT_ROWS rows).
Under tensor parallelism only the segment path runs: column-parallel A outputs are all-gathered
(A is split along r), row-parallel A outputs are all-reduced (A split along in) and each rank adds its
B output columns before the base layer's all-reduce.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from shard.lora.store import AdapterStore, LoraWeights
from shard.model.dist import DistContext

GATHER_WASTE_PER_SEGMENT = 128
LoraHook = Callable[[torch.Tensor, torch.Tensor], None]  # (x_local, y_partial) -> adds into y in place



@dataclass(frozen=True, slots=True)
class Segment:
    weights: LoraWeights
    rows: slice | torch.Tensor  # token rows of this adapter: a slice when contiguous, else an index


class LoraKernel(Protocol):
    """A backend's multi-LoRA kernel for one forward's segments (shard.lora.cpu_bgmv.CpuBgmv on CPU)."""

    def apply(self, layer: int, module: str, x: torch.Tensor, y: torch.Tensor) -> bool:
        """y [T, N] += LoRA(x [T, K]) for every segment; False (nothing done) when x or y do not fit."""
        ...


# (adapters, their token rows, tokens in the batch, store version, device, activation dtype) -> a kernel
# for this forward, or None: shard.model.backend.Backend.lora_kernel
KernelFactory = Callable[[list[LoraWeights], list["slice | torch.Tensor"], int, int, torch.device,
                          torch.dtype], "LoraKernel | None"]


@dataclass(slots=True)
class ConcatCache:
    """Concatenated adapters of the last batch composition, per (layer, module)."""

    key: tuple = ()
    entries: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor] | None] = field(default_factory=dict)

    def reset(self, key: tuple) -> None:
        if key != self.key:
            self.key, self.entries = key, {}


def _shrink(x: torch.Tensor, a: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * (x @ a.T), with a upcast to x's dtype when it is stored narrower."""
    xa = x @ a.to(x.dtype).T
    if scale != 1.0:
        xa.mul_(scale)
    return xa


def _add_rows(y: torch.Tensor, rows: slice | torch.Tensor, xa: torch.Tensor, b: torch.Tensor) -> None:
    """y[rows] += xa @ b.T, in place (one fused addmm when the rows are a slice)."""
    b = b.to(y.dtype)
    if isinstance(rows, slice):
        y[rows].addmm_(xa, b.T)
    else:
        y.index_add_(0, rows, xa @ b.T)


class LoraBatch:
    """The LoRA work of one forward. Built by `build`; None when the batch has no adapter rows."""

    def __init__(self, segments: list[Segment], num_tokens: int, dist: DistContext, cache: ConcatCache,
                 gather: bool, kernel: LoraKernel | None = None) -> None:
        self.segments, self.num_tokens, self.dist = segments, num_tokens, dist
        self.cache, self.gather, self.kernel = cache, gather, kernel
        self._masks: dict[str, torch.Tensor] = {}

    @classmethod
    def build(cls, adapter_ids: list[str | None], query_lens: list[int], store: AdapterStore,
              dist: DistContext, cache: ConcatCache, device: torch.device, kernel_for: KernelFactory,
              force: str | None = None) -> LoraBatch | None:
        """Group token rows by adapter. `kernel_for`: the backend's LoRA kernel builder. `force` ("segment" |
        "gather" | "kernel") overrides the rule (tests, bench); a forced "kernel" still falls back to the
        rule where the kernel does not apply."""
        ranges: dict[str, list[tuple[int, int]]] = {}
        start = 0
        for aid, q in zip(adapter_ids, query_lens, strict=True):
            if aid is not None:
                ranges.setdefault(aid, []).append((start, start + q))
            start += q
        if not ranges:
            return None
        segments = [Segment(store.get(aid), _rows(rs, device)) for aid, rs in ranges.items()]
        sum_r = sum(seg.weights.rank for seg in segments)
        useful = sum(seg.weights.rank * (b - a)
                     for seg, rs in zip(segments, ranges.values(), strict=True) for a, b in rs)
        cheap = start * sum_r - useful <= GATHER_WASTE_PER_SEGMENT * len(segments)
        gather = dist.world_size == 1 and len(segments) > 1 and cheap
        kernel = None
        if force in (None, "kernel") and dist.world_size == 1:
            kernel = kernel_for([s.weights for s in segments], [s.rows for s in segments], start,
                                         store.version, device, store.dtype)
        if force in ("segment", "gather"):
            gather = force == "gather" and dist.world_size == 1
        if kernel is not None:
            gather = False
        if gather:
            cache.reset((store.version, *ranges))
        elif cache.key and cache.key[0] != store.version:
            cache.reset(())  # an adapter came or went: drop the stale concatenations now
        return cls(segments, start, dist, cache, gather, kernel)

    def column(self, layer: int, module: str, x: torch.Tensor, y: torch.Tensor) -> None:
        """y [T, out_local] (a view into the packed output) += LoRA(x [T, in]), column-parallel module."""
        if self.kernel is not None and self.kernel.apply(layer, module, x, y):
            return
        if self.gather:
            self._gathered(layer, module, x, y)
            return
        for seg in self.segments:
            ab = seg.weights.layers[layer].get(module)
            if ab is None:
                continue
            xa = _shrink(x[seg.rows], ab[0], seg.weights.scale)  # [t, r_local]
            if self.dist.world_size > 1:
                xa = self.dist.all_gather(xa, list(seg.weights.r_sizes))  # [t, r]
            _add_rows(y, seg.rows, xa, ab[1])

    def row(self, layer: int, module: str) -> LoraHook:
        """Hook for RowParallelLinear: adds this rank's B columns into the partial sum y [T, out]."""
        def hook(x: torch.Tensor, y: torch.Tensor) -> None:
            if self.kernel is not None and self.kernel.apply(layer, module, x, y):  # world 1: all of y
                return
            if self.gather:
                self._gathered(layer, module, x, y)
                return
            for seg in self.segments:
                ab = seg.weights.layers[layer].get(module)
                if ab is None:
                    continue
                xa = self.dist.all_reduce(_shrink(x[seg.rows], ab[0], seg.weights.scale))  # [t, r]
                o0, o1 = seg.weights.out_ranges[module]
                _add_rows(y[:, o0:o1], seg.rows, xa, ab[1])
        return hook

    def _gathered(self, layer: int, module: str, x: torch.Tensor, y: torch.Tensor) -> None:
        key = (layer, module)
        if key not in self.cache.entries:
            parts = [s.weights.layers[layer][module] for s in self.segments
                     if module in s.weights.layers[layer]]
            self.cache.entries[key] = None if not parts else (
                torch.cat([a.to(x.dtype) for a, _ in parts]), torch.cat([b.to(x.dtype) for _, b in parts], 1))
        entry = self.cache.entries[key]
        if entry is None:
            return
        xa = x @ entry[0].T  # [T, sum_r]: every token times every adapter of the batch
        xa *= self._mask(module, x)  # keep each token's own adapter columns only, times its scale
        y.addmm_(xa, entry[1].T)

    def _mask(self, module: str, x: torch.Tensor) -> torch.Tensor:
        if module not in self._masks:
            having = [s for s in self.segments if module in s.weights.layers[0]]
            total = sum(s.weights.rank for s in having)
            mask = torch.zeros(self.num_tokens, total, dtype=x.dtype, device=x.device)
            col = 0
            for s in having:
                mask[s.rows, col:col + s.weights.rank] = s.weights.scale
                col += s.weights.rank
            self._masks[module] = mask
        return self._masks[module]


def _rows(ranges: list[tuple[int, int]], device: torch.device) -> slice | torch.Tensor:
    if len(ranges) == 1:
        return slice(*ranges[0])
    return torch.cat([torch.arange(a, b) for a, b in ranges]).to(device)
