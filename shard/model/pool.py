"""ShardPagePool: this rank's one flat buffer of fixed-size pages, shared by KV blocks and adapters.

Page p is elements [p * page_elems, (p + 1) * page_elems) of the buffer. As a KV block it holds
`block_size` token slots laid out [layers, 2 (K, V), block_size, kv_heads_local, head_dim], so one
layer's K (or V) of a whole block is one contiguous run: attention gathers whole blocks. KV slot
s = page * block_size + offset. As adapter storage a page holds a slice of the adapter's packed
weights (see shard.lora.store).
Page 0 is reserved (the router never hands it out; used for liveness/padding).
"""

from __future__ import annotations

import torch

from chameleon.core.memory import ModelShape, kv_heads_on_rank


class ShardPagePool:
    def __init__(self, shape: ModelShape, num_pages: int, block_size: int, dtype: torch.dtype,
                 device: torch.device, world: int = 1, rank: int = 0) -> None:
        if num_pages < 2:
            raise ValueError(f"the pool needs at least 2 pages (page 0 is reserved), got {num_pages}")
        self.num_pages = num_pages
        self.block_size = block_size
        self.kv_heads = kv_heads_on_rank(shape, world, rank)
        self.head_dim = shape.head_dim
        self.num_layers = shape.num_layers
        self.page_elems = block_size * shape.num_layers * 2 * self.kv_heads * shape.head_dim
        self.dtype = dtype
        self.buffer = torch.zeros(num_pages * self.page_elems, dtype=dtype, device=device)
        pages = self.buffer.view(num_pages, shape.num_layers, 2, block_size, self.kv_heads, shape.head_dim)
        # per layer: K and V caches [num_pages, block_size, kv_heads_local, head_dim] (views of the buffer)
        self.kv = [(pages[:, layer, 0], pages[:, layer, 1]) for layer in range(shape.num_layers)]

    @property
    def page_bytes(self) -> int:
        return self.page_elems * self.buffer.element_size()

    @property
    def nbytes(self) -> int:
        return self.buffer.numel() * self.buffer.element_size()

    def page(self, page_id: int) -> torch.Tensor:
        """Flat view [page_elems] of one page."""
        if not 0 < page_id < self.num_pages:
            raise ValueError(f"page {page_id} is outside 1..{self.num_pages - 1}")
        return self.buffer[page_id * self.page_elems:(page_id + 1) * self.page_elems]
