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
  (`rebase`) by the runner.
"""

from __future__ import annotations

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

    def resize(self, pages: int) -> tuple[int, torch.Tensor | None]:
        """Keep pages [0, pages) allocated (clamped to [2, num_pages]); returns (bytes released, < 0 when
        grown; the old buffer when it moved (CUDA), for the caller to rebase views, else None).
        Contents of the pages kept are preserved; pages allocated again read as zeros."""
        pages = max(2, min(pages, self.num_pages))
        old, before = self.allocated_pages, self.nbytes
        if pages == old:
            return 0, None
        pb = self.page_bytes
        if self._host is not None:
            if pages < old:
                self._host.release(pages * pb, old * pb)
            else:
                self.buffer[old * self.page_elems:pages * self.page_elems].zero_()
            self.allocated_pages = pages
            return before - self.nbytes, None
        return self._move(pages, before)

    def _move(self, pages: int, before: int) -> tuple[int, torch.Tensor | None]:
        old_buf, keep = self.buffer, min(pages, self.allocated_pages) * self.page_elems
        if pages < self.allocated_pages:  # stage through the host: never both buffers on the device
            staged = old_buf[:keep].to("cpu")
            self.buffer = old_buf = None  # type: ignore[assignment]
            torch.cuda.empty_cache()
            self.buffer = torch.empty(pages * self.page_elems, dtype=self.dtype, device=self.device)
            self.buffer[:keep].copy_(staged)
        else:
            self.buffer = torch.zeros(pages * self.page_elems, dtype=self.dtype, device=self.device)
            self.buffer[:keep].copy_(old_buf[:keep])
        self.allocated_pages = pages
        self._views()
        torch.cuda.empty_cache()
        return before - self.nbytes, old_buf

    def rebase(self, t: torch.Tensor, old: torch.Tensor | None) -> torch.Tensor:
        """`t` again, pointing into the current buffer when it was a view of `old` (same offsets)."""
        if old is None or t.untyped_storage().data_ptr() != old.untyped_storage().data_ptr():
            return t
        return self.buffer.view(t.dtype).as_strided(t.shape, t.stride(), t.storage_offset())
