"""Tensor-parallel building blocks. Each parameter owns its sharding through `param.weight_loader`,
so the model file stays declarative and the loader only maps checkpoint names to parameters.

Collectives live here only: the all-reduce in RowParallelLinear and VocabParallelEmbedding, the
all-gather in ParallelLMHead. With world_size == 1 every layer is a plain dense layer. Matmuls go through
shard.model.cpu_kernels.small_linear (F.linear, with a C kernel for small CPU float32 batches), or, once
`pack_linears` has re-laid the weights in the C kernel's panels (CPU float32 with the kernels loaded),
through cpu_kernels.packed_linear for every batch size. A packed layer keeps its weight Parameter (now
[panels, K, PANEL]) and records its row count in `packed_rows` (None: not packed).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from chameleon.memory import split_range
from shard.model import cpu_kernels, cpu_step
from shard.model.cpu_kernels import small_linear
from shard.model.dist import DistContext

LoraHook = Callable[[torch.Tensor, torch.Tensor], None]  # (x_local, y_partial) -> adds into y in place


def _param(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
           loader: Callable[[nn.Parameter, torch.Tensor, str | None], None]) -> nn.Parameter:
    p = nn.Parameter(torch.empty(shape, dtype=dtype, device=device), requires_grad=False)
    p.weight_loader = loader  # type: ignore[attr-defined]
    return p


class PackableLinear(nn.Module):
    """A linear layer whose weight [N, K] may be packed for the C kernel (see the module docstring)."""

    weight: nn.Parameter
    packed_rows: int | None = None

    def pack(self) -> None:
        """Re-lays the weight in panels (cpu_kernels.pack) and records its row count; once."""
        if self.packed_rows is None:
            self.packed_rows = self.weight.shape[0]
            self.weight.data = cpu_kernels.pack(self.weight.data)

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.packed_rows is None:
            return small_linear(x, self.weight, bias)
        return cpu_kernels.packed_linear(x, self.weight, self.packed_rows, bias)


def pack_linears(model: nn.Module) -> int:
    """Packs every linear weight of `model` when that pays (cpu_kernels.can_pack: CPU float32, kernels
    loaded); call once, after the weights are loaded. Returns the number of layers packed."""
    layers = [m for m in model.modules() if isinstance(m, PackableLinear) and cpu_kernels.can_pack(m.weight)]
    for m in layers:
        m.pack()
    return len(layers)


class ColumnParallelLinear(PackableLinear):
    """y_local = x @ W_local.T (+ b_local): output features sharded, no communication.

    `parts` packs several checkpoint modules into one matmul (q/k/v, gate/up): each is
    (shard_id, full_out, (start, end)) with this rank's row range of that module.
    """

    def __init__(self, in_features: int, parts: list[tuple[str, int, tuple[int, int]]], bias: bool,
                 dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
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


class RowParallelLinear(PackableLinear):
    """y = all_reduce(x_local @ W[:, in_local].T + lora) + b: input features sharded."""

    def __init__(self, in_range: tuple[int, int], out_features: int, bias: bool, dist: DistContext,
                 dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
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
    """Each rank holds a contiguous vocab range; out-of-range ids give zeros; all-reduce sums. When a tied
    LM head packs the shared weight, `packed_rows` is set here too and lookups read the panels."""

    packed_rows: int | None = None

    def __init__(self, vocab: int, hidden: int, dist: DistContext, dtype: torch.dtype,
                 device: torch.device) -> None:
        super().__init__()
        self.dist = dist
        self.start, self.end = split_range(vocab, dist.world_size, dist.rank)
        self.weight = _param((self.end - self.start, hidden), dtype, device, self._load)

    def _load(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str | None) -> None:
        param.data.copy_(loaded[self.start:self.end])

    def _rows(self, ids: torch.Tensor) -> torch.Tensor:
        if self.packed_rows is None:
            return F.embedding(ids, self.weight)
        return cpu_kernels.packed_rows(self.weight, ids)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.dist.is_single:
            return self._rows(ids)
        inside = (ids >= self.start) & (ids < self.end)
        h = self._rows(torch.where(inside, ids - self.start, 0))
        h = h * inside[:, None].to(h.dtype)
        return self.dist.all_reduce(h)


class ParallelLMHead(PackableLinear):
    """logits = all_gather(h @ W_local.T) over the vocab split; shares the embedding when tied."""

    def __init__(self, embedding: VocabParallelEmbedding, vocab: int, tied: bool, dist: DistContext,
                 dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.dist = dist
        self.sizes = [split_range(vocab, dist.world_size, r)[1] - split_range(vocab, dist.world_size, r)[0]
                      for r in range(dist.world_size)]
        self.tied = tied
        self._tied_to = [embedding] if tied else []  # a list: not registered as a submodule
        if tied:
            self.weight = embedding.weight
        else:
            self.start, self.end = embedding.start, embedding.end
            self.weight = _param(tuple(embedding.weight.shape), dtype, device, self._load)

    def _load(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str | None) -> None:
        param.data.copy_(loaded[self.start:self.end])

    def pack(self) -> None:
        super().pack()
        for embedding in self._tied_to:  # the same Parameter: its lookups must read the panels now
            embedding.packed_rows = self.packed_rows

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.dist.all_gather(self.matmul(h), self.sizes)


class RMSNorm(nn.Module):
    """Computed in float32, as transformers' LlamaRMSNorm (on CPU float32 by the C kernel)."""

    def __init__(self, hidden: int, eps: float, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.eps = eps
        self.weight = _param((hidden,), dtype, device, lambda p, t, _s: p.data.copy_(t))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = cpu_step.rms_norm(x, self.weight, self.eps)
        return y if y is not None else self._torch(x)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual); the sum may be written into `residual` in place."""
        y = cpu_step.rms_norm(x, self.weight, self.eps, residual)
        if y is not None:
            return y, residual
        residual = x + residual
        return self._torch(residual), residual

    def _torch(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)
