"""Multi-LoRA on CPU float32 through the C kernel `ck_lora` (shard.model.cpu_kernels; built by the CPU
backend, shard.model.cpu_backend, with the library it loaded): one call per
(layer, module) does every segment's shrink and expand, instead of two torch matmuls per segment.

Per adapter a table of int64 entries [layer, module, ENTRY] = (A ptr, A row stride, B ptr, B row stride,
r, weight type, scale as the bits of a float64, 0) points at its (A, B) tensors where they live (pool
views or copies), built once per adapter and kept (with the LoraWeights it describes) until the store's
version changes. A ptr 0: module absent. Weight type: float32, bfloat16 or float16 (the adapter's
storage dtype, see shard.lora.store); the kernel widens 16-bit weights to float32 in registers and
computes y += B (scale * (A x)) in float32. The tables hold raw addresses: they are valid while the
LoraWeights are alive, which the cache entry guarantees by holding them. World size 1 only (tensor
parallelism needs collectives between shrink and expand); activations must be CPU float32 and every
tensor must have unit column stride, else the torch paths run.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass, field

import torch

from chameleon.core.memory import LORA_TARGETS
from shard.lora.store import LoraWeights
from shard.model.cpu_kernels import CpuKernels, usable

MODULE_INDEX = {m: i for i, m in enumerate(LORA_TARGETS)}
MAX_SEGMENT_ROWS = 256  # the C kernel's limit (ck_max_m); longer segments go to the torch segment path
ENTRY = 8  # int64 fields per table entry (LORA_ENTRY in cpu_kernels.c)
WEIGHT_TYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}  # WT_* in cpu_kernels.c


@dataclass(slots=True)
class TableCache:
    """Per-adapter pointer tables, valid for one store version."""

    version: int = -1
    tables: dict[str, tuple[LoraWeights, torch.Tensor | None]] = field(default_factory=dict)

    def get(self, weights: LoraWeights, version: int) -> torch.Tensor | None:
        if version != self.version:
            self.version, self.tables = version, {}
        hit = self.tables.get(weights.adapter_id)
        if hit is None or hit[0] is not weights:
            hit = (weights, adapter_table(weights))
            self.tables[weights.adapter_id] = hit
        return hit[1]


def weight_usable(t: torch.Tensor) -> bool:
    """A CPU float32/bfloat16/float16 matrix with unit column stride (rows may be strided)."""
    return t.device.type == "cpu" and t.dtype in WEIGHT_TYPES and t.dim() == 2 and t.stride(1) == 1


def adapter_table(weights: LoraWeights) -> torch.Tensor | None:
    """int64 [layers, modules, ENTRY]; None when a tensor is not a CPU float32/bfloat16/float16 matrix
    with unit column stride, or A and B differ in dtype."""
    table = torch.zeros(len(weights.layers), len(LORA_TARGETS), ENTRY, dtype=torch.int64)
    (scale_bits,) = struct.unpack("<q", struct.pack("<d", float(weights.scale)))
    for layer, modules in enumerate(weights.layers):
        for module, (a, b) in modules.items():
            if not (weight_usable(a) and weight_usable(b)) or a.dtype != b.dtype or a.shape[0] != b.shape[1]:
                return None
            table[layer, MODULE_INDEX[module]] = torch.tensor(
                [a.data_ptr(), a.stride(0), b.data_ptr(), b.stride(0), a.shape[0], WEIGHT_TYPES[a.dtype],
                 scale_bits, 0])
    return table


class CpuBgmv:
    """The kernel's view of one forward's segments (token rows grouped by adapter)."""

    def __init__(self, lib: ctypes.CDLL, rows: list[torch.Tensor], tables: list[torch.Tensor]) -> None:
        self.lib = lib
        self.seg = torch.tensor([0, *torch.tensor([len(r) for r in rows]).cumsum(0).tolist()],
                                dtype=torch.int32)
        self.rows = torch.cat(rows).to(torch.int32)
        self.tables = tables  # kept alive: the pointer array below points into them
        self.ptrs = torch.tensor([t.data_ptr() for t in tables], dtype=torch.int64)
        self.threads = torch.get_num_threads()

    @classmethod
    def build(cls, kernels: CpuKernels, weights: list[LoraWeights], rows: list[slice | torch.Tensor],
              num_tokens: int, cache: TableCache, version: int, device: torch.device,
              dtype: torch.dtype) -> CpuBgmv | None:
        """None when the kernel does not apply (device, activation dtype, long segments, adapter tensors
        the kernel cannot read). `dtype`: the activations' (model) dtype."""
        if device.type != "cpu" or dtype != torch.float32:
            return None
        idx = [torch.arange(num_tokens)[r] if isinstance(r, slice) else r.cpu() for r in rows]
        if max(len(i) for i in idx) > MAX_SEGMENT_ROWS:
            return None
        tables = [cache.get(w, version) for w in weights]
        if any(t is None for t in tables):
            return None
        return cls(kernels.lib, idx, tables)  # type: ignore[arg-type]

    def apply(self, layer: int, module: str, x: torch.Tensor, y: torch.Tensor) -> bool:
        """y [T, N] += LoRA(x [T, K]) for every segment; False (nothing done) when x or y do not fit."""
        if not (usable(x) and usable(y)) or x.shape[0] != y.shape[0]:
            return False
        entry = layer * len(LORA_TARGETS) + MODULE_INDEX[module]
        rc = self.lib.ck_lora(x.data_ptr(), x.stride(0), y.data_ptr(), y.stride(0), len(self.tables),
                              self.seg.data_ptr(), self.rows.data_ptr(), self.ptrs.data_ptr(), entry,
                              y.shape[1], x.shape[1], self.threads)
        return rc == 0
