"""CpuKernelBackend: the model's operations through the C kernels (CPU; float32 for all but the sampler).

What it holds: the loaded library (shard.model.cpu_kernels.CpuKernels, loaded once when the runner is
built), every float32 linear weight of the model re-laid in the kernels' panels (its own storage: the
model's Parameter is taken over and left empty), the LoRA kernel's per-adapter pointer tables, and the
fused decoder stack (shard.model.cpu_decode.DecodeStack) as its layers executor. Every operation whose
kernel does not apply (dtype, strides, sizes) runs TorchBackend's torch ops, so results match the torch
backend within float32 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from shard.lora.cpu_bgmv import CpuBgmv, TableCache
from shard.model.attention import AttentionMeta, prefill_attention
from shard.model.backend import KV, TorchBackend
from shard.model.cpu_decode import DecodeStack
from shard.model.cpu_kernels import CpuKernels, can_pack, pack, packed_rows
from shard.model.layers import packable_weights
from shard.model.llama import LlamaForCausalLM

if TYPE_CHECKING:
    from shard.lora.store import LoraWeights


@dataclass(frozen=True, slots=True)
class Panels:
    """A weight in the kernels' layout: panels [ceil(rows / PANEL), K, PANEL] of its `rows` rows."""

    owner: torch.Tensor   # the model's Parameter (kept alive: the table is keyed by its id)
    panels: torch.Tensor
    rows: int


class CpuKernelBackend(TorchBackend):
    """The C kernels where they apply, TorchBackend's torch ops elsewhere."""

    name = "cpu-kernels"

    def __init__(self, kernels: CpuKernels) -> None:
        self.kernels = kernels
        self._panels: dict[int, Panels] = {}  # id(Parameter) -> its panels
        self._tables = TableCache()            # the LoRA kernel's per-adapter pointer tables
        self.stack: DecodeStack | None = None  # the fused layers executor (None: the model's layer loop)

    def prepare(self, model: nn.Module) -> None:
        """Packs every float32 linear weight (a tied LM head's weight once: it is the embedding's) into
        panels held here; the model's Parameter gives its elements up. Then builds the fused stack (for
        the Llama family's layer layout)."""
        for weight in packable_weights(model):
            if id(weight) in self._panels or not can_pack(weight):
                continue
            self._panels[id(weight)] = Panels(weight, pack(weight.data), weight.shape[0])
            weight.data = weight.data.new_empty((0, weight.shape[1]))
        self.packed_layers = sum(1 for _ in packable_weights(model) if id(_) in self._panels)
        if isinstance(model, LlamaForCausalLM):
            self.stack = DecodeStack.for_model(model, self.kernels, self.packed)

    def packed(self, weight: torch.Tensor) -> torch.Tensor | None:
        """The panels of a model weight (None: not packed)."""
        p = self._panels.get(id(weight))
        return p.panels if p is not None else None

    def weight_bytes(self, model: nn.Module) -> int:
        held = sum(p.panels.numel() * p.panels.element_size() for p in self._panels.values())
        return held + super().weight_bytes(model)

    def layers_executor(self) -> DecodeStack | None:
        return self.stack

    def linear(self, weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        p = self._panels.get(id(weight))
        if p is None:
            return self.kernels.small_linear(x, weight, bias)
        return self.kernels.packed_linear(x, p.panels, p.rows, bias)

    def embedding(self, weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        p = self._panels.get(id(weight))
        return super().embedding(weight, ids) if p is None else packed_rows(p.panels, ids)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        y = self.kernels.rms_norm(x, weight, eps)
        return y if y is not None else super().rms_norm(x, weight, eps)

    def add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.kernels.rms_norm(x, weight, eps, residual)  # adds x into residual in place
        return (y, residual) if y is not None else super().add_rms_norm(x, residual, weight, eps)

    def silu_mul(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        y = self.kernels.silu_mul(gate, up)
        return y if y is not None else super().silu_mul(gate, up)

    def rope_store(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
                   sin: torch.Tensor, kv: KV, meta: AttentionMeta) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kernels.rope_store(q, k, v, cos, sin, meta.slots, kv[0], kv[1]):  # rotates q, k in place
            return q, k
        return super().rope_store(q, k, v, cos, sin, kv, meta)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv: KV,
                  meta: AttentionMeta) -> torch.Tensor:
        """Decode rows through the C kernel (straight from the pages), prefill rows through torch."""
        k_cache, v_cache = kv
        if not meta.prefills:  # decode only: every row is a decode row, in order
            o = self.kernels.decode_attention(q, k_cache, v_cache, meta.decode_blocks, meta.decode_lens,
                                              None, None)
            return o if o is not None else super().attention(q, k, v, kv, meta)
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        if not meta.decode_rows.numel() or self.kernels.decode_attention(
                q, k_cache, v_cache, meta.decode_blocks, meta.decode_lens, meta.decode_rows,
                out.view(q.shape[0], -1)) is None:
            return super().attention(q, k, v, kv, meta)
        prefill_attention(q, k, v, k_cache, v_cache, meta, out)
        return out.reshape(q.shape[0], -1)

    def lora_kernel(self, weights: list[LoraWeights], rows: list[slice | torch.Tensor], num_tokens: int,
                    version: int, device: torch.device, dtype: torch.dtype) -> CpuBgmv | None:
        return CpuBgmv.build(self.kernels, weights, rows, num_tokens, self._tables, version, device, dtype)

    def lse_argmax(self, logits: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        fused = self.kernels.lse_argmax(logits)  # one pass per row on CPU float32
        return fused if fused is not None else super().lse_argmax(logits)
