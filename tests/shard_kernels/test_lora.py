"""Multi-LoRA SGMV shrink/expand against the torch reference: ranks 8..128 mixed in one launch, base
rows untouched, adapter weights read in place from a flat page pool laid out as shard.lora.store."""

from __future__ import annotations

import pytest
import torch

from shard.kernels import reference
from shard.kernels.lora import (
    lora_table,
    segments_from_row_adapters,
    segments_from_runs,
    sgmv_expand,
    sgmv_lora,
    sgmv_shrink,
)
from tests.shard_kernels.conftest import tolerance

IN, OUT = 48, 40
RANKS = (8, 16, 64, 128)
SCALES = (2.0, 0.5, 0.25, 1.0 / 16)


def _adapters(dtype: torch.dtype, device: torch.device, gen: torch.Generator,
              out_dim: int = OUT) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.randn(r, IN, generator=gen).div(IN ** 0.5).to(dtype).to(device),
             torch.randn(out_dim, r, generator=gen).div(r ** 0.5).to(dtype).to(device)) for r in RANKS]


def _in_pool(pairs: list[tuple[torch.Tensor, torch.Tensor]], page_elems: int,
             pages: list[list[int]]) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Pack each adapter's A then B into its (ascending, adjacent) pages of a flat pool buffer, as
    AdapterStore._place does, and return the buffer and views of it."""
    dtype, device = pairs[0][0].dtype, pairs[0][0].device
    n_pages = 1 + max(max(p) for p in pages)
    buf = torch.full((page_elems * n_pages,), float("nan"), dtype=dtype, device=device)  # NaN: never read
    views = []
    for (a, b), owned in zip(pairs, pages, strict=True):
        off = owned[0] * page_elems
        assert a.numel() + b.numel() <= len(owned) * page_elems
        va = buf[off:off + a.numel()].view(a.shape)
        vb = buf[off + a.numel():off + a.numel() + b.numel()].view(b.shape)
        va.copy_(a)
        vb.copy_(b)
        views.append((va, vb))
    return buf, views


def _rows(n: int, gen: torch.Generator) -> torch.Tensor:
    """Row -> adapter slot, every slot used, some base rows (-1), interleaved."""
    slots = torch.randint(-1, len(RANKS), (n,), generator=gen)
    slots[:len(RANKS) + 1] = torch.tensor([*range(len(RANKS)), -1])
    return slots[torch.randperm(n, generator=gen)]


def test_sgmv_mixed_ranks_from_pool_match_reference(target) -> None:
    device, dtype = target
    gen = torch.Generator().manual_seed(5)
    pairs = _adapters(dtype, device, gen)
    page_elems = 1024
    sizes = [-(-(r * IN + OUT * r) // page_elems) for r in RANKS]
    starts = [3, 9, 20, 40]  # not adjacent to each other: each adapter in its own run of pages
    owned = [list(range(s, s + n)) for s, n in zip(starts, sizes, strict=True)]
    buf, views = _in_pool(pairs, page_elems, owned)
    table = lora_table(views, list(SCALES), buf)
    assert table.weights.data_ptr() == buf.data_ptr()  # in place, no copy
    row_adapter = _rows(21, gen).to(device)
    segs = segments_from_row_adapters(row_adapter)
    x = torch.randn(21, IN, generator=gen).to(dtype).to(device)
    base = torch.randn(21, OUT + 8, generator=gen).to(dtype).to(device)
    got = sgmv_lora(x, table, segs, base.clone(), OUT, col_start=5)
    want = reference.sgmv_lora(x, pairs, list(SCALES), row_adapter, base, col_start=5)
    torch.testing.assert_close(got.float(), want.float(), **tolerance(dtype))
    untouched = (row_adapter < 0).nonzero().flatten()
    assert torch.equal(got[untouched], base[untouched])  # base rows exactly as they were
    assert torch.equal(got[:, :5], base[:, :5]) and torch.equal(got[:, OUT + 5:], base[:, OUT + 5:])


def test_shrink_writes_only_each_rows_rank(target) -> None:
    device, dtype = target
    gen = torch.Generator().manual_seed(9)
    pairs = _adapters(dtype, device, gen)
    table = lora_table(pairs, list(SCALES))  # not views of one buffer: packed
    row_adapter = torch.tensor([3, 0, -1, 1, 2, 3], device=device)
    x = torch.randn(6, IN, generator=gen).to(dtype).to(device)
    y = sgmv_shrink(x, table, segments_from_row_adapters(row_adapter))
    assert y.shape == (6, 128) and y.dtype == torch.float32
    for row, slot in enumerate(row_adapter.tolist()):
        if slot < 0:
            assert not y[row].any()
            continue
        a = pairs[slot][0]
        want = (x[row].float() @ a.float().T) * SCALES[slot]
        torch.testing.assert_close(y[row, :a.shape[0]], want, **tolerance(dtype))
        assert not y[row, a.shape[0]:].any()


def test_expand_prefill_segments(target) -> None:
    """Long segments (several row tiles) as in prefill, contiguous rows per adapter."""
    device, dtype = target
    gen = torch.Generator().manual_seed(2)
    pairs = _adapters(dtype, device, gen)
    row_adapter = torch.tensor([0] * 3 + [-1] * 2 + [3] * 19 + [1] * 4, device=device)
    x = torch.randn(row_adapter.numel(), IN, generator=gen).to(dtype).to(device)
    base = torch.zeros(row_adapter.numel(), OUT, dtype=dtype, device=device)
    table = lora_table(pairs, list(SCALES))
    segs = segments_from_runs([(0, 3, 0), (5, 19, 3), (24, 4, 1)], device)
    by_row = segments_from_row_adapters(row_adapter)
    assert segs.max_len == by_row.max_len == 19 and segs.seg_len.tolist() == [3, 19, 4]
    assert sorted(segs.rows.tolist()) == sorted(by_row.rows.tolist())
    got = sgmv_expand(sgmv_shrink(x, table, segs), table, segs, base.clone(), OUT)
    want = reference.sgmv_lora(x, pairs, list(SCALES), row_adapter, base)
    torch.testing.assert_close(got.float(), want.float(), **tolerance(dtype))


def test_column_parallel_slices(target) -> None:
    """TP=2 column-parallel: each rank shrinks with its rows of A, the halves are gathered per row into
    y [T, r], and expand with the full-rank B (a tp_split table) gives the unsplit result."""
    device, dtype = target
    gen = torch.Generator().manual_seed(8)
    pairs = _adapters(dtype, device, gen)
    row_adapter = torch.tensor([1, -1, 3, 0, 2, 2], device=device)
    segs = segments_from_row_adapters(row_adapter)
    x = torch.randn(6, IN, generator=gen).to(dtype).to(device)
    halves = []
    for k in range(2):
        local = [(a[k * a.shape[0] // 2:(k + 1) * a.shape[0] // 2], b) for a, b in pairs]
        halves.append(sgmv_shrink(x, lora_table(local, list(SCALES), tp_split=True), segs))
    y = torch.zeros(6, max(RANKS), dtype=torch.float32, device=device)
    for row, slot in enumerate(row_adapter.tolist()):
        if slot >= 0:
            half = RANKS[slot] // 2
            y[row, :2 * half] = torch.cat([halves[0][row, :half], halves[1][row, :half]])
    table = lora_table([(a[:a.shape[0] // 2], b) for a, b in pairs], list(SCALES), tp_split=True)
    assert table.max_b_rank == max(RANKS) and table.max_rank == max(RANKS) // 2
    base = torch.zeros(6, OUT, dtype=dtype, device=device)
    got = sgmv_expand(y, table, segs, base.clone(), OUT)
    want = reference.sgmv_lora(x, pairs, list(SCALES), row_adapter, base)
    torch.testing.assert_close(got.float(), want.float(), **tolerance(dtype))


def test_no_adapter_rows_is_a_no_op() -> None:
    pairs = _adapters(torch.float32, torch.device("cpu"), torch.Generator().manual_seed(1))
    segs = segments_from_row_adapters(torch.full((4,), -1))
    out = torch.ones(4, OUT)
    assert torch.equal(sgmv_lora(torch.ones(4, IN), lora_table(pairs, list(SCALES)), segs, out, OUT),
                       torch.ones(4, OUT))


def test_rank_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="rank"):
        lora_table([(torch.zeros(8, IN), torch.zeros(OUT, 16))], [1.0])
