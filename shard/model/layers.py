"""Tensor-parallel building blocks. Each parameter owns its sharding through `param.weight_loader`,
so the model file stays declarative and the loader only maps checkpoint names to parameters.

Collectives live here only: the all-reduce in RowParallelLinear and VocabParallelEmbedding, the
all-gather in ParallelLMHead. With world_size == 1 every layer is a plain dense layer. The arithmetic
(matmuls, embedding lookups, norms) goes through the layer's backend (shard.model.backend.Backend, given
at construction), which may hold the weights in its own layout: a layer never reads its weight itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from chameleon.core.memory import split_range
from shard.model.backend import Backend
from shard.model.dist import DistContext

if TYPE_CHECKING:
    from shard.lora.kernels import LoraHook


def _param(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
           loader: Callable[[nn.Parameter, torch.Tensor, str | None], None]) -> nn.Parameter:
    p = nn.Parameter(torch.empty(shape, dtype=dtype, device=device), requires_grad=False)
    p.weight_loader = loader  # type: ignore[attr-defined]
    return p


class Linear(nn.Module):
    """A linear layer y = x @ W.T (+ b) whose product its backend computes."""

    weight: nn.Parameter

    def __init__(self, ops: Backend) -> None:
        super().__init__()
        self.ops = ops

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return self.ops.linear(self.weight, x, bias)


def packable_weights(model: nn.Module) -> Iterator[nn.Parameter]:
    """The weight of every linear layer of `model` (a tied LM head's is the embedding's), in module
    order: what a backend may re-lay for its matmul kernels."""
    for m in model.modules():
        if isinstance(m, Linear):
            yield m.weight


class ColumnParallelLinear(Linear):
    """y_local = x @ W_local.T (+ b_local): output features sharded, no communication.

    `parts` packs several checkpoint modules into one matmul (q/k/v, gate/up): each is
    (shard_id, full_out, (start, end)) with this rank's row range of that module.
    """

    def __init__(self, in_features: int, parts: list[tuple[str, int, tuple[int, int]]], bias: bool,
                 dtype: torch.dtype, device: torch.device, ops: Backend) -> None:
        super().__init__(ops)
        self.offsets: dict[str, tuple[int, int, int]] = {}  # shard_id -> (local offset, start, end)
        offset = 0
        for shard_id, _full, (start, end) in parts:
            self.offsets[shard_id] = (offset, start, end)
            offset += end - start
        self.out_local = offset
        self.weight = _param((offset, in_features), dtype, device, self._load)
        self.bias = _param((offset,), dtype, device, self._load) if bias else None

    def _load(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str | None) -> None:
        offset, start, end = self.offsets[shard_id or next(iter(self.offsets))]
        param.data[offset:offset + end - start].copy_(loaded[start:end])

    def part(self, y: torch.Tensor, shard_id: str) -> torch.Tensor:
        """The columns of y ([T, out_local]) that belong to one packed module."""
        offset, start, end = self.offsets[shard_id]
        return y[:, offset:offset + end - start]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matmul(x, self.bias)


class RowParallelLinear(Linear):
    """y = all_reduce(x_local @ W[:, in_local].T + lora) + b: input features sharded."""

    def __init__(self, in_range: tuple[int, int], out_features: int, bias: bool, dist: DistContext,
                 dtype: torch.dtype, device: torch.device, ops: Backend) -> None:
        super().__init__(ops)
        self.dist = dist
        self.in_range = in_range
        self.weight = _param((out_features, in_range[1] - in_range[0]), dtype, device, self._load)
        self.bias = _param((out_features,), dtype, device, self._load_bias) if bias else None

    def _load(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str | None) -> None:
        param.data.copy_(loaded[:, self.in_range[0]:self.in_range[1]])

    def _load_bias(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str | None) -> None:
        param.data.copy_(loaded)

    def forward(self, x: torch.Tensor, lora: LoraHook | None = None) -> torch.Tensor:
        y = self.matmul(x)
        if lora is not None:
            lora(x, y)  # row-parallel LoRA adds its output columns per rank, before the reduce
        y = self.dist.all_reduce(y)
        return y + self.bias if self.bias is not None else y


class VocabParallelEmbedding(nn.Module):
    """Each rank holds a contiguous vocab range; out-of-range ids give zeros; all-reduce sums."""

    def __init__(self, vocab: int, hidden: int, dist: DistContext, dtype: torch.dtype,
                 device: torch.device, ops: Backend) -> None:
        super().__init__()
        self.dist, self.ops = dist, ops
        self.start, self.end = split_range(vocab, dist.world_size, dist.rank)
        self.weight = _param((self.end - self.start, hidden), dtype, device, self._load)

    def _load(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str | None) -> None:
        param.data.copy_(loaded[self.start:self.end])

    def _rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.ops.embedding(self.weight, ids)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.dist.is_single:
            return self._rows(ids)
        inside = (ids >= self.start) & (ids < self.end)
        h = self._rows(torch.where(inside, ids - self.start, 0))
        h = h * inside[:, None].to(h.dtype)
        return self.dist.all_reduce(h)


class ParallelLMHead(Linear):
    """logits = all_gather(h @ W_local.T) over the vocab split; shares the embedding when tied."""

    def __init__(self, embedding: VocabParallelEmbedding, vocab: int, tied: bool, dist: DistContext,
                 dtype: torch.dtype, device: torch.device, ops: Backend) -> None:
        super().__init__(ops)
        self.dist = dist
        self.sizes = [split_range(vocab, dist.world_size, r)[1] - split_range(vocab, dist.world_size, r)[0]
                      for r in range(dist.world_size)]
        self.tied = tied
        if tied:
            self.weight = embedding.weight
        else:
            self.start, self.end = embedding.start, embedding.end
            self.weight = _param(tuple(embedding.weight.shape), dtype, device, self._load)

    def _load(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str | None) -> None:
        param.data.copy_(loaded[self.start:self.end])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.dist.all_gather(self.matmul(h), self.sizes)


class RMSNorm(nn.Module):
    """weight * x / rms(x), computed in float32 as transformers' LlamaRMSNorm (by the backend)."""

    def __init__(self, hidden: int, eps: float, dtype: torch.dtype, device: torch.device,
                 ops: Backend) -> None:
        super().__init__()
        self.eps, self.ops = eps, ops
        self.weight = _param((hidden,), dtype, device, lambda p, t, _s: p.data.copy_(t))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.rms_norm(x, self.weight, self.eps)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual); the sum may be written into `residual` in place."""
        return self.ops.add_rms_norm(x, residual, self.weight, self.eps)
