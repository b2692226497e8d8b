"""Decode CUDA graphs (shard.model.cuda_graphs), the parts that need no GPU: buckets, padding, when graphs
apply, and the graph's body (static buffers, padding rows, per-row LoRA columns) run eagerly through the
Triton backend on CPU under the interpreter (TRITON_INTERPRET=1, set by this directory's conftest), which
must give the eager forward's logits. The capture and replay themselves are checked in tests/gpu."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from shard.model.cuda_graphs import (
    PAD_SLOT,
    DecodeGraphs,
    choose_bucket,
    graph_buckets,
    graphs_unavailable,
    pad_decode,
)
from shard.model.dist import DistContext
from shard.model.runner import ForwardBatch, ModelRunner

BLOCK = 4


def test_buckets() -> None:
    assert graph_buckets(0) == () and graph_buckets(-1) == ()
    assert graph_buckets(1) == (1,)
    assert graph_buckets(20) == (1, 2, 4, 8, 16, 20)
    assert graph_buckets(64) == (1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64)
    buckets = graph_buckets(32)
    assert [choose_bucket(n, buckets) for n in (0, 1, 3, 4, 5, 9, 32, 33)] == [None, 1, 4, 4, 8, 16, 32, None]


def test_unavailable_reasons() -> None:
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert graphs_unavailable(cuda, "triton", 1, 64) is None
    assert "disabled" in graphs_unavailable(cuda, "triton", 1, 0)
    assert "CUDA" in graphs_unavailable(cpu, "triton", 1, 64)
    assert "torch backend" in graphs_unavailable(cuda, "torch", 1, 64)
    assert "tensor parallel" in graphs_unavailable(cuda, "triton", 2, 64)


def _decode(n: int, width: int = 3, adapters: list[str | None] | None = None) -> ForwardBatch:
    tables = [[10 * i + j + 1 for j in range(width)] for i in range(n)]
    lens = [width * BLOCK - i for i in range(n)]
    return ForwardBatch.build([[5 + i] for i in range(n)], lens, tables, BLOCK, adapters)


def test_padding() -> None:
    fb = _decode(3, adapters=[None, "x", None])
    padded = pad_decode(fb, graph_buckets(8), width=5)
    assert padded is not None and (padded.n, padded.bucket) == (3, 4)
    assert padded.ids[0].tolist() == [5, 6, 7, 0]                       # tokens, then padding
    assert padded.ids[1, :3].tolist() == fb.positions.tolist() and padded.ids[1, 3] == 0
    assert padded.ids[2, :3].tolist() == fb.slots.tolist() and padded.ids[2, 3] == PAD_SLOT
    assert padded.ids[3].tolist() == [12, 11, 10, 1]                    # context lengths; padding reads 1 key
    assert padded.tables[1].tolist() == [11, 12, 13, 0, 0] and padded.tables[3].tolist() == [0] * 5
    assert padded.adapters == [None, "x", None]


def test_not_served() -> None:
    buckets = graph_buckets(4)
    assert pad_decode(_decode(5), buckets, width=5) is None           # more rows than the largest bucket
    assert pad_decode(_decode(2, width=6), buckets, width=5) is None  # a table wider than the graphs'
    prefill = ForwardBatch.build([[1, 2, 3], [4]], [3, 9], [[1], [2, 3, 4]], BLOCK)
    assert pad_decode(prefill, buckets, width=5) is None              # prefill rows run eagerly


def test_cpu_runner_captures_nothing(tiny_root: Path) -> None:
    runner = ModelRunner(tiny_root / "model", dtype=torch.float32, device="cpu", dist=DistContext.single(),
                         num_pages=64, block_size=BLOCK, backend="torch", cuda_graph_max_batch=64)
    assert runner.graphs is None
    out = runner.forward(_decode(2))
    assert out.last_logits.shape == (2, runner.vocab_size)


@pytest.mark.parametrize("adapters", [[None, None, None], ["a8", None, "a128"]])
def test_graph_body_matches_eager_forward(tiny_root: Path, adapters: list[str | None]) -> None:
    runner = ModelRunner(tiny_root / "model", dtype=torch.float32, device="cpu", dist=DistContext.single(),
                         num_pages=1200, block_size=BLOCK, adapter_dtype="model", backend="triton")
    first = 100
    for name in ("a8", "a128"):
        path = tiny_root / "adapters" / name
        need = runner.adapter_store.pages_needed(path)
        runner.adapter_store.load(name, path, list(range(first, first + need)))
        first += need
    prompts, tables = [[3, 4, 5, 6, 7], [8, 9, 10], [11, 12, 13, 14]], [[1, 2], [3, 4], [5, 6]]
    runner.forward(ForwardBatch.build(prompts, [5, 3, 4], tables, BLOCK, adapters))
    step = ForwardBatch.build([[20], [21], [22]], [6, 4, 5], tables, BLOCK, adapters)
    graphs = DecodeGraphs(runner, graph_buckets(8))
    got = graphs.run_uncaptured(step)          # bucket 4: one padding row
    want = runner.forward(step).last_logits    # eager (no graphs on CPU)
    assert got is not None and got.shape == want.shape
    torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)


def test_a_new_pool_drops_the_graphs(tiny_root: Path) -> None:
    """Graphs point at the pool's pages: Warmup's release of the pool (runner.pool = None) and every
    re-allocation drop them (allocate_pool captures new ones where they apply)."""
    runner = ModelRunner(tiny_root / "model", dtype=torch.float32, device="cpu", dist=DistContext.single(),
                         num_pages=8, block_size=BLOCK, backend="torch")
    runner.graphs = DecodeGraphs.__new__(DecodeGraphs)  # stands in for captured graphs
    runner.pool = None
    assert runner.graphs is None
    runner.graphs = DecodeGraphs.__new__(DecodeGraphs)
    runner.allocate_pool(8)
    assert runner.graphs is None and runner.num_pages == 8


class _FakeGraph:
    """Stands in for torch.cuda.CUDAGraph on CPU: counts replays."""

    replays = 0

    def replay(self) -> None:
        _FakeGraph.replays += 1


def test_capture_and_replay_plumbing(tiny_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """capture_all and run with torch.cuda's graph API replaced by stand-ins that check every call against
    the real signatures: the capture path runs (warm-up + capture forward per bucket and LoRA variant) and
    a served batch replays its bucket's graph. The real capture is checked in tests/gpu."""
    real_graph = torch.cuda.graph

    @contextlib.contextmanager
    def graph(cuda_graph: object, **kw: object) -> Iterator[None]:
        inspect.signature(real_graph).bind(cuda_graph, **kw)
        yield

    class Stream:
        def __init__(self, *args: object, **kw: object) -> None:
            inspect.signature(torch.cuda.Stream).bind(*args, **kw)

        def wait_stream(self, other: object) -> None:
            assert isinstance(other, Stream)

    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: object())
    runner = ModelRunner(tiny_root / "model", dtype=torch.float32, device="cpu", dist=DistContext.single(),
                         num_pages=64, block_size=BLOCK, adapter_dtype="model", backend="triton")
    graphs = DecodeGraphs(runner, graph_buckets(2))
    graphs.capture_all()
    assert sorted(graphs.graphs) == [(1, False), (1, True), (2, False), (2, True)]
    runner.forward(ForwardBatch.build([[3, 4, 5]], [3], [[1]], BLOCK))
    logits = graphs.run(ForwardBatch.build([[6]], [4], [[1]], BLOCK))
    assert _FakeGraph.replays == 1 and logits is not None and logits.shape == (1, runner.vocab_size)
    assert graphs.run(ForwardBatch.build([[6], [7], [8]], [4, 1, 1], [[1], [2], [3]], BLOCK)) is None


def test_failed_capture_leaves_eager_decode(tiny_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A capture that raises turns the graphs off (logged) instead of failing Warmup."""
    from shard.model import cuda_graphs

    def broken(self: DecodeGraphs) -> None:
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(cuda_graphs, "graphs_unavailable", lambda *args: None)
    monkeypatch.setattr(DecodeGraphs, "capture_all", broken)
    runner = ModelRunner(tiny_root / "model", dtype=torch.float32, device="cpu", dist=DistContext.single(),
                         num_pages=16, block_size=BLOCK, backend="triton", cuda_graph_max_batch=4)
    assert runner.graphs is None
    assert runner.forward(_decode(2)).last_logits.shape == (2, runner.vocab_size)
