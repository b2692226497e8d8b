"""The shard's elastic page pool: releasing segments returns memory to the OS (VmRSS drops), kept
pages keep their contents and ids, regrown pages read as zeros; the moving (CUDA) path, run here on
CPU, rebases the adapters' views so a forward gives the same logits after a resize."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from chameleon_pb import chameleon_pb2

from chameleon.core.memory import ModelShape
from shard.model.dist import DistContext
from shard.model.host_buffer import HostBuffer
from shard.model.pool import ShardPagePool
from shard.model.runner import ForwardBatch, ModelRunner
from shard.server.adapter_service import AdapterService
from shard.server.free_memory import process_rss

BLOCK = 4
MIB = 1 << 20


def _pool(pages: int = 2048, segment_bytes: int = 8 * MIB) -> ShardPagePool:
    shape = ModelShape(4, 256, 512, 4, 4, 64, 1000)  # page = 4 * 2 * 4 * 64 * 16 * 4 bytes = 128 KiB
    return ShardPagePool(shape, pages, 16, torch.float32, torch.device("cpu"), segment_bytes=segment_bytes)


def test_release_returns_memory_to_the_os_and_keeps_the_low_pages() -> None:
    pool = _pool()
    assert pool.page_bytes == 128 * 1024 and pool.segment_pages == 64 and pool.nbytes == 256 * MIB
    pool.page(5).fill_(3.0)
    rss = process_rss()
    released = pool.resize(1024)
    assert released == 128 * MIB and pool.nbytes == 128 * MIB
    assert process_rss() <= rss - 120 * MIB  # the OS got the pages back
    assert bool((pool.page(5) == 3.0).all())
    with pytest.raises(ValueError, match="outside"):
        pool.page(1500)
    grown = pool.resize(2048)
    assert grown == -128 * MIB and process_rss() >= rss - 8 * MIB  # touched again: resident
    assert float(pool.kv[0][0][1500].abs().sum()) == 0.0 and bool((pool.page(5) == 3.0).all())


def test_host_buffer_release_rounds_to_os_pages() -> None:
    buf = HostBuffer(10 * 4096 + 100)
    buf.tensor.fill_(7)
    assert buf.release(4096 + 10, 3 * 4096) == 4096  # only page 2 lies wholly inside
    assert int(buf.tensor[4096 + 10:3 * 4096].sum()) == 0  # the partial part is zero-filled
    assert int(buf.tensor[4096 + 9]) == 7 and int(buf.tensor[3 * 4096]) == 7
    assert buf.release(9 * 4096, 10 * 4096 + 100) == 4096 + 4096  # the tail page goes with the buffer end


def test_moving_resize_rebases_adapter_views(tiny_root: Path) -> None:
    """The CUDA path (a new buffer, contents copied, views rebased), exercised on CPU."""
    runner = ModelRunner(tiny_root / "model", dtype=torch.float32, device="cpu", dist=DistContext.single(),
                         num_pages=900, block_size=BLOCK)
    assert runner.pool is not None
    runner.pool._host = None  # as on CUDA: resize moves the buffer
    path = tiny_root / "adapters" / "a128"
    need = runner.adapter_store.pages_needed(path)
    assert need < 600
    runner.adapter_store.load("a128", path, list(range(1, 1 + need)))
    prefill = ForwardBatch.build([[5, 6, 7, 8, 9]], [5], [[need + 1, need + 2]], BLOCK, ["a128"])
    before = runner.forward(prefill).last_logits
    released = runner.resize_pool(need + 3)
    assert released == (897 - need) * runner.page_bytes
    assert runner.pool.buffer.numel() == (need + 3) * runner.pool.page_elems
    new = runner.pool.buffer.untyped_storage().data_ptr()
    tensors = [t for layer in runner.adapter_store.get("a128").layers for ab in layer.values() for t in ab]
    assert tensors and all(t.untyped_storage().data_ptr() == new for t in tensors)  # no view of the old one
    after = runner.forward(prefill).last_logits
    assert torch.equal(before, after)
    runner.resize_pool(900)
    assert torch.equal(before, runner.forward(prefill).last_logits)


class _Core:
    """What AdapterService.ResizePool uses of ShardCore, around a real runner."""

    def __init__(self, runner: ModelRunner, busy_pages: set[int]) -> None:
        self.runner, self.busy_pages = runner, busy_pages
        self.adapter_manager = SimpleNamespace(store=runner.adapter_store)

    def locked(self, fn: Callable[[], object]) -> object:
        return fn()

    def busy(self) -> tuple[set[int], set[str]]:
        return self.busy_pages, set()

    def headroom(self) -> chameleon_pb2.Headroom:
        pool = self.runner.pool
        return chameleon_pb2.Headroom(pool_pages_allocated=pool.allocated_pages,
                                      segment_pages=pool.segment_pages)


def test_resize_pool_rpc_refuses_to_release_held_pages(tiny_root: Path) -> None:
    runner = ModelRunner(tiny_root / "model", dtype=torch.float32, device="cpu", dist=DistContext.single(),
                         num_pages=900, block_size=BLOCK)
    path = tiny_root / "adapters" / "a8"
    need = runner.adapter_store.pages_needed(path)
    runner.adapter_store.load("a8", path, list(range(500, 500 + need)))
    core = _Core(runner, {700})
    svc = AdapterService(core)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot release pages >= 600"):
        svc.ResizePool(chameleon_pb2.ResizePoolRequest(num_pages=600), None)
    assert runner.pool is not None and runner.pool.allocated_pages == 900  # nothing changed
    core.busy_pages = set()
    with pytest.raises(ValueError, match="hold KV of a cached batch or a resident adapter"):
        svc.ResizePool(chameleon_pb2.ResizePoolRequest(num_pages=400), None)  # the adapter lives at 500+
    for bad in (1, 901):
        with pytest.raises(ValueError, match="num_pages must be"):
            svc.ResizePool(chameleon_pb2.ResizePoolRequest(num_pages=bad), None)
    reply = svc.ResizePool(chameleon_pb2.ResizePoolRequest(num_pages=600), None)
    assert reply.num_pages == 600 and reply.released_bytes == 300 * runner.page_bytes
    assert reply.headroom.pool_pages_allocated == 600
    with pytest.raises(ValueError, match="released"):  # a load into released pages is refused
        svc._load(chameleon_pb2.LoadAdapterRequest(adapter_id="a16", pages=[650]))
    assert svc.ResizePool(chameleon_pb2.ResizePoolRequest(num_pages=900), None).num_pages == 900


@pytest.mark.gpu
def test_cuda_resize_returns_device_memory_and_keeps_the_logits(tiny_root: Path) -> None:
    """On a GPU: a shrink shows in mem_get_info (after the allocator's cache is emptied), kept pages
    and adapter views survive the move, a regrow allocates again. Deselected without a GPU."""
    assert torch.cuda.is_available(), "gpu-marked test without a CUDA device (deselect with -m 'not gpu')"
    dev = torch.device("cuda", 0)
    runner = ModelRunner(tiny_root / "model", dtype=torch.float32, device=dev, dist=DistContext.single(),
                         num_pages=16384, block_size=BLOCK)
    path = tiny_root / "adapters" / "a128"
    need = runner.adapter_store.pages_needed(path)
    runner.adapter_store.load("a128", path, list(range(1, 1 + need)))
    prefill = ForwardBatch.build([[5, 6, 7, 8, 9]], [5], [[need + 1, need + 2]], BLOCK, ["a128"])
    before = runner.forward(prefill).last_logits.cpu()
    torch.cuda.synchronize(dev)
    free0, _ = torch.cuda.mem_get_info(dev)
    released = runner.resize_pool(need + 3)
    free1, _ = torch.cuda.mem_get_info(dev)
    assert released > 0 and free1 - free0 >= 0.9 * released
    assert torch.equal(before, runner.forward(prefill).last_logits.cpu())
    runner.resize_pool(16384)
    free2, _ = torch.cuda.mem_get_info(dev)
    assert free1 - free2 >= 0.9 * released
    assert torch.equal(before, runner.forward(prefill).last_logits.cpu())
