"""The shard's execution seam: how the model's operations run on this device.

The model (shard.model.llama, with the building blocks of shard.model.layers) states the architecture
and calls its backend for every operation whose fast implementation depends on the device; the backend
is chosen once, when the runner is built (shard.model.runner.select_backend), and holds whatever it
re-lays the weights into. Implementations: `TorchBackend` (torch ops; every device), and
shard.model.cpu_backend.CpuKernelBackend (the C kernels, CPU). A CUDA backend (Triton kernels) would be
a third subclass; nothing in the model changes for it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from shard.model.attention import AttentionMeta, paged_attention, store_kv
from shard.model.rotary import apply_rotary

if TYPE_CHECKING:
    from shard.lora.kernels import LoraBatch, LoraKernel
    from shard.lora.store import LoraWeights

KV = tuple[torch.Tensor, torch.Tensor]  # one layer's (K cache, V cache) [pages, block_size, Hk, D]
SMALL_M = 32  # up to this many rows torch_linear computes (w @ x.T).T on CPU instead of x @ w.T


class CausalLM(Protocol):
    """The model's forward in its three stages (shard.model.llama.LlamaForCausalLM)."""

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, kv: list[KV], meta: AttentionMeta,
                 lora: LoraBatch | None, rows: torch.Tensor | None) -> torch.Tensor: ...

    def embed(self, input_ids: torch.Tensor,
              positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def decode(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv: list[KV], meta: AttentionMeta,
               lora: LoraBatch | None) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def logits(self, h: torch.Tensor, residual: torch.Tensor | None,
               rows: torch.Tensor | None) -> torch.Tensor: ...


class LayersExecutor(Protocol):
    """Runs every decoder layer at once (an alternative to the model's layer loop)."""

    def run(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv: list[KV], meta: AttentionMeta,
            lora: LoraBatch | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(h, residual) after the last layer, as the layer loop gives them; None: not this batch (then
        nothing was written and the loop runs)."""
        ...


class Backend(ABC):
    """How the model's operations execute. A backend provides:

    - weight layout preparation: `prepare(model)` once after the weights are loaded; a backend may keep a
      weight in its own layout (its own storage) and take the model's copy over (the Parameter then
      holds no elements, the model never reads weights except through its backend); `weight_bytes`
      counts what this rank holds either way;
    - the dense operations: `linear` (x @ W.T + b for a weight Parameter of the model), `embedding`,
      `rms_norm` / `add_rms_norm`, `silu_mul`;
    - attention over the paged KV: `rope_store` (rotary on q and k, and k, v into their KV slots) then
      `attention` (every row over its sequence's cached keys);
    - LoRA: `lora_kernel` builds one forward's multi-adapter kernel (None: shard.lora.kernels' torch
      paths apply the adapters);
    - an optional whole-stack executor: `run` is the forward the runner calls; by default the model's
      own forward, a backend may replace the layer loop with its `layers_executor`;
    - the sampler's `lse_argmax` (logsumexp and argmax of each row of the logits).
    The torch implementation of every operation is `TorchBackend`'s; other backends derive from it and
    fall back to it wherever their kernels do not apply.
    """

    name: str = "abstract"
    packed_layers: int = 0  # linears this backend re-laid into its own layout (prepare)

    @abstractmethod
    def prepare(self, model: nn.Module) -> None: ...

    @abstractmethod
    def weight_bytes(self, model: nn.Module) -> int: ...

    @abstractmethod
    def linear(self, weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        ...

    @abstractmethod
    def embedding(self, weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor: ...

    @abstractmethod
    def add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual); the sum may be written into `residual` in place."""

    @abstractmethod
    def silu_mul(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def rope_store(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
                   sin: torch.Tensor, kv: KV, meta: AttentionMeta) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary on q [T, Hq, D] and k [T, Hk, D] (returned; possibly rotated in place), and the rotated k
        and v [T, Hk, D] written into their KV slots (meta.slots)."""

    @abstractmethod
    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv: KV,
                  meta: AttentionMeta) -> torch.Tensor:
        """[T, Hq * D]: every row's causal attention over its sequence's keys (the cache holds k, v)."""

    @abstractmethod
    def lora_kernel(self, weights: list[LoraWeights], rows: list[slice | torch.Tensor], num_tokens: int,
                    version: int, device: torch.device, dtype: torch.dtype) -> LoraKernel | None: ...

    @abstractmethod
    def lse_argmax(self, logits: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """(logsumexp of each row [S], argmax of each row) for logits [S, V]."""

    def layers_executor(self) -> LayersExecutor | None:
        """The whole-stack executor prepared for the model (None: the model's layer loop)."""
        return None

    def run(self, model: CausalLM, input_ids: torch.Tensor, positions: torch.Tensor, kv: list[KV],
            meta: AttentionMeta, lora: LoraBatch | None, rows: torch.Tensor | None) -> torch.Tensor:
        """The model's forward (logits [len(rows), vocab]), with the layer loop replaced by
        `layers_executor()` where it serves the batch."""
        stack = self.layers_executor()
        if stack is None:
            return model(input_ids, positions, kv, meta, lora, rows)
        h, cos, sin = model.embed(input_ids, positions)
        fused = stack.run(h, cos, sin, kv, meta, lora)
        h, residual = fused if fused is not None else model.decode(h, cos, sin, kv, meta, lora)
        return model.logits(h, residual, rows)


def torch_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear; small M on CPU as (w @ x.T).T, which MKL runs closer to the read bandwidth than x @ w.T."""
    if x.dim() == 2 and x.device.type == "cpu" and x.shape[0] <= SMALL_M and not x.requires_grad:
        y = (w @ x.T).T.contiguous()
        return y + bias if bias is not None else y
    return F.linear(x, w, bias)


def torch_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Computed in float32, as transformers' LlamaRMSNorm."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


class TorchBackend(Backend):
    """Every operation as torch ops; weights stay in the model's Parameters."""

    name = "torch"

    def prepare(self, model: nn.Module) -> None:
        return None

    def weight_bytes(self, model: nn.Module) -> int:
        return sum(p.numel() * p.element_size() for p in model.parameters())

    def linear(self, weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return torch_linear(x, weight, bias)

    def embedding(self, weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, weight)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return torch_rms_norm(x, weight, eps)

    def add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        residual = x + residual
        return torch_rms_norm(residual, weight, eps), residual

    def silu_mul(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return F.silu(gate) * up

    def rope_store(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
                   sin: torch.Tensor, kv: KV, meta: AttentionMeta) -> tuple[torch.Tensor, torch.Tensor]:
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        store_kv(k, v, kv[0], kv[1], meta)
        return q, k

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv: KV,
                  meta: AttentionMeta) -> torch.Tensor:
        return paged_attention(q, k, v, kv[0], kv[1], meta)

    def lora_kernel(self, weights: list[LoraWeights], rows: list[slice | torch.Tensor], num_tokens: int,
                    version: int, device: torch.device, dtype: torch.dtype) -> LoraKernel | None:
        return None

    def lse_argmax(self, logits: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        # logprob = logit - lse, without a [S, V] log_softmax
        return torch.logsumexp(logits, dim=-1), torch.argmax(logits, dim=-1).tolist()
