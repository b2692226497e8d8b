"""ShardPagePool: this rank's flat buffer of fixed-size pages, shared by KV blocks and adapters, and
elastic: built from segments that are released when the router shrinks the pool and allocated again
when it grows it back.

Page p is elements [p * page_elems, (p + 1) * page_elems) of the buffer. As a KV block it holds
`block_size` token slots laid out [layers, 2 (K, V), block_size, kv_heads_local, head_dim], so one
layer's K (or V) of a whole block is one contiguous run: attention gathers whole blocks. KV slot
s = page * block_size + offset. As adapter storage a page holds a slice of the adapter's packed
weights (see shard.lora.store).
Page 0 is reserved (the router never hands it out; used for liveness/padding).

Elasticity (`resize`): pages [0, allocated_pages) are backed by memory; the rest were released. A
segment is `segment_pages` pages (about `SEGMENT_BYTES`). Page ids never change: the router shrinks
only past pages nothing lives in (the shard checks it too, shard.server.adapter_service).
- CPU: the buffer is one anonymous mapping of the full pool (host_buffer.py). Releasing maps fresh
  anonymous memory over the released range (MAP_FIXED), which returns those pages to the OS (RSS and
  the cgroup's usage drop at once) while the addresses, hence every view, stay valid. Growing
  touches the range again (zero-filled), so allocated bytes are resident bytes.
- CUDA: the buffer holds exactly the allocated pages. A resize allocates a new buffer, copies the
  kept pages (through host memory when shrinking, so the device never holds both), drops the old one
  and empties torch's cache so `mem_get_info` shows the memory; views of the old buffer are rebased
  (`rebase_view`, through the runner's `on_move`), first onto the host copy, so the old buffer is
  really freed before the new one is allocated. The cost grows with the pages KEPT (a copy through
  host memory; seconds for tens of GiB): a pool mapped segment by segment with the CUDA driver's
  virtual memory API (cuMemMap) would release in place, as the CPU path does; not done yet.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from chameleon.core.memory import ModelShape, kv_heads_on_rank
from shard.model.host_buffer import HostBuffer

SEGMENT_BYTES = 64 << 20


class ShardPagePool:
    def __init__(self, shape: ModelShape, num_pages: int, block_size: int, dtype: torch.dtype,
                 device: torch.device, world: int = 1, rank: int = 0,
                 segment_bytes: int = SEGMENT_BYTES) -> None:
        if num_pages < 2:
            raise ValueError(f"the pool needs at least 2 pages (page 0 is reserved), got {num_pages}")
        self.num_pages = num_pages
        self.block_size = block_size
        self.kv_heads = kv_heads_on_rank(shape, world, rank)
        self.head_dim = shape.head_dim
        self.num_layers = shape.num_layers
        self.page_elems = block_size * shape.num_layers * 2 * self.kv_heads * shape.head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        itemsize = torch.empty((), dtype=dtype).element_size()
        self.segment_pages = max(1, min(num_pages, segment_bytes // max(self.page_elems * itemsize, 1)))
        self._host: HostBuffer | None = None
        if self.device.type == "cpu":
            self._host = HostBuffer(num_pages * self.page_elems * itemsize)
            self.buffer = self._host.tensor.view(dtype)[:num_pages * self.page_elems]
            self.buffer.zero_()  # touch: allocated bytes are resident
        else:
            self.buffer = torch.zeros(num_pages * self.page_elems, dtype=dtype, device=self.device)
        self.allocated_pages = num_pages
        self._views()

    def _views(self) -> None:
        s = self.buffer.numel() // self.page_elems
        pages = self.buffer.view(s, self.num_layers, 2, self.block_size, self.kv_heads, self.head_dim)
        # per layer: K and V caches [pages, block_size, kv_heads_local, head_dim] (views of the buffer)
        self.kv = [(pages[:, layer, 0], pages[:, layer, 1]) for layer in range(self.num_layers)]

    @property
    def page_bytes(self) -> int:
        return self.page_elems * self.buffer.element_size()

    @property
    def nbytes(self) -> int:
        """Bytes allocated now (the pages below `allocated_pages`)."""
        return self.allocated_pages * self.page_bytes

    @property
    def total_bytes(self) -> int:
        """Bytes of the full pool (every page allocated)."""
        return self.num_pages * self.page_bytes

    def page(self, page_id: int) -> torch.Tensor:
        """Flat view [page_elems] of one page."""
        if not 0 < page_id < self.allocated_pages:
            raise ValueError(f"page {page_id} is outside 1..{self.allocated_pages - 1} (allocated pages)")
        return self.buffer[page_id * self.page_elems:(page_id + 1) * self.page_elems]

    def resize(self, pages: int, on_move: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> int:
        """Keep pages [0, pages) allocated (clamped to [2, num_pages]); returns the bytes released (< 0
        when grown). Contents of the pages kept are preserved; pages allocated again read as zeros.
        When the buffer moves (CUDA), `on_move(old, new)` must re-point every view of `old` into `new`
        (`rebase_view`); it is called with host-staged contents in between when shrinking."""
        pages = max(2, min(pages, self.num_pages))
        old, before = self.allocated_pages, self.nbytes
        if pages == old:
            return 0
        pb = self.page_bytes
        if self._host is not None:
            if pages < old:
                self._host.release(pages * pb, old * pb)
            else:
                self.buffer[old * self.page_elems:pages * self.page_elems].zero_()
            self.allocated_pages = pages
            return before - self.nbytes
        self._move(pages, on_move or (lambda _old, _new: None))
        return before - self.nbytes

    def _move(self, pages: int, on_move: Callable[[torch.Tensor, torch.Tensor], None]) -> None:
        old, keep = self.buffer, min(pages, self.allocated_pages) * self.page_elems
        if pages < self.allocated_pages:  # stage through the host: never both buffers on the device
            staged = old[:keep].detach().to("cpu", copy=True)
            on_move(old, staged)
            self.kv, self.buffer = [], staged
            del old
            torch.cuda.empty_cache()
            new = torch.empty(pages * self.page_elems, dtype=self.dtype, device=self.device)
            new[:keep].copy_(staged)
            on_move(staged, new)
        else:
            new = torch.zeros(pages * self.page_elems, dtype=self.dtype, device=self.device)
            new[:keep].copy_(old[:keep])
            on_move(old, new)
        self.buffer, self.allocated_pages = new, pages
        self._views()
        torch.cuda.empty_cache()


def rebase_view(t: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """`t` again, pointing into `new` when it was a view of `old`'s storage (same offsets), else `t`."""
    if t.untyped_storage().data_ptr() != old.untyped_storage().data_ptr():
        return t
    return new.view(t.dtype).as_strided(t.shape, t.stride(), t.storage_offset())
