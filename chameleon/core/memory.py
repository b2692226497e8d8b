"""Memory arithmetic shared by router and shard, so the two can never disagree.

Pool model (S-LoRA unified paging): each shard rank carves one pool of `num_pages` pages at warmup.
One page holds one KV block (`block_size` tokens of K and V for every layer, this rank's KV heads).
Page ids are shared across ranks: the router's allocator hands the same page ids to every rank, for
KV blocks and for resident adapters alike. An adapter occupies, on every rank, the pages needed by
the rank with the largest slice (`adapter_pages`).

Tensor-parallel slicing (uneven where a dimension does not divide): attention is split by KV-head
groups, MLP by intermediate columns (`shard_ranges`), LoRA A/B as in `lora_slice_elems`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
COLUMN_PARALLEL: frozenset[str] = frozenset({"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"})
ROW_PARALLEL: frozenset[str] = frozenset({"o_proj", "down_proj"})
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# safetensors header dtype codes of the floating types adapters come in
SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
ADAPTER_DTYPE_POLICIES = ("auto", "model")


@dataclass(frozen=True, slots=True)
class ModelShape:
    """The few numbers of a Llama-family config that memory math needs."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return cls(
            num_layers=int(config["num_hidden_layers"]),
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            vocab_size=int(config["vocab_size"]),
        )

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> ModelShape:
        return cls.from_config(json.loads((Path(model_dir) / "config.json").read_text()))

    def module_dims(self, module: str) -> tuple[int, int]:
        """(in_features, out_features) of a LoRA target module."""
        q, kv, h, i = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, \
            self.hidden_size, self.intermediate_size
        dims = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
        if module not in dims:
            raise ValueError(f"unknown LoRA target module {module!r}; supported: {', '.join(LORA_TARGETS)}")
        return dims[module]


def split_sizes(n: int, world: int) -> list[int]:
    """Split n items over `world` ranks as evenly as possible, larger parts first."""
    if world < 1:
        raise ValueError("world size must be >= 1")
    base, extra = divmod(n, world)
    return [base + (1 if r < extra else 0) for r in range(world)]


def split_range(n: int, world: int, rank: int) -> tuple[int, int]:
    """[start, end) of rank's part of n items (see `split_sizes`)."""
    sizes = split_sizes(n, world)
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


def kv_heads_on_rank(shape: ModelShape, world: int, rank: int) -> int:
    """KV heads held by `rank`. Query heads follow their KV group, so attention splits by groups."""
    if shape.num_kv_heads < world:
        raise ValueError(f"cannot split {shape.num_kv_heads} KV heads over {world} ranks")
    return split_sizes(shape.num_kv_heads, world)[rank]


def kv_bytes_per_token(shape: ModelShape, dtype_bytes: int, world: int = 1, rank: int = 0) -> int:
    """K and V of one token for every layer, on one rank."""
    return shape.num_layers * 2 * kv_heads_on_rank(shape, world, rank) * shape.head_dim * dtype_bytes


def page_bytes(shape: ModelShape, block_size: int, dtype_bytes: int, world: int = 1, rank: int = 0) -> int:
    return block_size * kv_bytes_per_token(shape, dtype_bytes, world, rank)


Range = tuple[int, int]


def shard_ranges(shape: ModelShape, module: str, world: int, rank: int) -> tuple[Range, Range]:
    """([in_start, in_end), [out_start, out_end)) of the base weight of `module` held by `rank`.

    q/k/v/o follow this rank's KV-head group range (query heads go with their KV head); gate/up split
    their output and down its input by `split_range` of the intermediate size.
    """
    fan_in, fan_out = shape.module_dims(module)
    group = shape.num_heads // shape.num_kv_heads
    kv_start = sum(split_sizes(shape.num_kv_heads, world)[:rank])
    kv_end = kv_start + kv_heads_on_rank(shape, world, rank)
    q_range = (kv_start * group * shape.head_dim, kv_end * group * shape.head_dim)
    kv_range = (kv_start * shape.head_dim, kv_end * shape.head_dim)
    ranges = {
        "q_proj": ((0, fan_in), q_range), "k_proj": ((0, fan_in), kv_range),
        "v_proj": ((0, fan_in), kv_range), "o_proj": (q_range, (0, fan_out)),
        "gate_proj": ((0, fan_in), split_range(fan_out, world, rank)),
        "up_proj": ((0, fan_in), split_range(fan_out, world, rank)),
        "down_proj": (split_range(fan_in, world, rank), (0, fan_out)),
    }
    return ranges[module]


def _sharded_dim(shape: ModelShape, module: str, world: int, rank: int) -> tuple[int, int]:
    """(local in, local out) of the base weight of `module` on `rank`."""
    (in_start, in_end), (out_start, out_end) = shard_ranges(shape, module, world, rank)
    return in_end - in_start, out_end - out_start


def lora_slice_elems(shape: ModelShape, module: str, r: int, world: int = 1, rank: int = 0) -> int:
    """Elements of one layer's LoRA A and B for `module` on `rank`.

    Column-parallel modules: A split along r ([r_local, in]), B along out ([out_local, r]); the
    A-output is all-gathered. Row-parallel modules: A split along in ([r, in_local]), B along out
    ([out_local, r]); the A-output is all-reduced and each rank adds its B columns before the base
    all-reduce. With world == 1 this is r * (in + out).
    """
    local_in, local_out = _sharded_dim(shape, module, world, rank)
    fan_in, fan_out = shape.module_dims(module)
    if module in COLUMN_PARALLEL:
        return split_sizes(r, world)[rank] * fan_in + local_out * r
    return r * local_in + split_sizes(fan_out, world)[rank] * r


def adapter_bytes(shape: ModelShape, r: int, targets: Iterable[str], dtype_bytes: int,
                  world: int = 1, rank: int = 0) -> int:
    """True size of an adapter's slice on one rank (all layers); world=1 gives the whole adapter."""
    per_layer = sum(lora_slice_elems(shape, m, r, world, rank) for m in targets)
    return shape.num_layers * per_layer * dtype_bytes


def pages_for(nbytes: int, page: int) -> int:
    return -(-nbytes // page) if nbytes > 0 else 0


def adapter_pages(shape: ModelShape, r: int, targets: Iterable[str], dtype_bytes: int,
                  block_size: int, world: int = 1, adapter_dtype_bytes: int | None = None) -> int:
    """Pool pages an adapter occupies on every rank: the maximum over ranks of its slice in pages.

    `dtype_bytes` is the pool's (KV) element size, which sets the page size; `adapter_dtype_bytes` the
    element size the adapter is stored in (`adapter_storage_dtype`; default: the pool's)."""
    targets = tuple(targets)
    stored = dtype_bytes if adapter_dtype_bytes is None else adapter_dtype_bytes
    return max(pages_for(adapter_bytes(shape, r, targets, stored, world, k),
                         page_bytes(shape, block_size, dtype_bytes, world, k)) for k in range(world))


def adapter_storage_dtype(model_dtype: str, file_dtypes: Iterable[str], policy: str = "auto") -> str:
    """The dtype an adapter's A/B are stored in, in the pool: the one rule router and shard both apply.

    `model_dtype`: the shard's weight/KV dtype ("float32", "bfloat16", "float16"); `file_dtypes`: the
    dtypes of the adapter's LoRA tensors on disk, as safetensors header codes ("BF16") or torch names
    ("bfloat16"). Policy "model": every adapter in the model dtype. Policy "auto" (lossless on-disk
    precision): when the model runs in float32 and every LoRA tensor is stored in one 16-bit float type
    (bfloat16 or float16), keep that type (16 -> 32 bit is exact, the kernels upcast while computing);
    otherwise the model dtype (float32 files stay float32; a 16-bit model converts as before).
    """
    if policy not in ADAPTER_DTYPE_POLICIES:
        raise ValueError(f"adapter dtype policy must be one of {', '.join(ADAPTER_DTYPE_POLICIES)}, "
                         f"got {policy!r}")
    if model_dtype not in DTYPE_BYTES:
        raise ValueError(f"unsupported model dtype {model_dtype!r}; expected one of {sorted(DTYPE_BYTES)}")
    found = {SAFETENSORS_DTYPES.get(d, d) for d in file_dtypes}
    if policy == "auto" and model_dtype == "float32" and len(found) == 1:
        (only,) = found
        if only in ("bfloat16", "float16"):
            return only
    return model_dtype


def blocks_for_tokens(tokens: int, block_size: int) -> int:
    return math.ceil(tokens / block_size) if tokens > 0 else 0
