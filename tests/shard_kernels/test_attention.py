"""Paged decode and (chunked) prefill attention against the torch references."""

from __future__ import annotations

import pytest
import torch

from shard.kernels import reference
from shard.kernels.attention import paged_decode_attention, prefill_attention
from tests.shard_kernels.conftest import tolerance

HK, DIM = 2, 32


def _pool(num_pages: int, block_size: int, dtype: torch.dtype, device: torch.device,
          gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """K/V caches laid out as shard.model.pool: views [pages, bs, Hk, D] of one layer of a flat buffer
    [pages, layers, 2, bs, Hk, D] (so pages are strided, as in the real pool)."""
    buf = torch.randn(num_pages, 2, 2, block_size, HK, DIM, generator=gen).to(dtype).to(device)
    return buf[:, 1, 0], buf[:, 1, 1]


def _tables(ctxs: list[int], block_size: int, num_pages: int, gen: torch.Generator) -> torch.Tensor:
    """Random non-contiguous pages (never page 0), padded with each row's first page."""
    perm = (torch.randperm(num_pages - 1, generator=gen) + 1).tolist()
    need = [-(-c // block_size) for c in ctxs]
    width = max(need)
    rows = []
    for n in need:
        pages, perm = perm[:n], perm[n:]
        rows.append(pages + pages[:1] * (width - n))
    return torch.tensor(rows, dtype=torch.int32)


@pytest.mark.parametrize("group", [1, 3])
@pytest.mark.parametrize("block_size", [4, 16])
def test_paged_decode_matches_reference(target, group: int, block_size: int) -> None:
    device, dtype = target
    gen = torch.Generator().manual_seed(group * 100 + block_size)
    ctxs = [1, 9, 37, block_size]
    num_pages = sum(-(-c // block_size) for c in ctxs) + 3
    k_cache, v_cache = _pool(num_pages, block_size, dtype, device, gen)
    index = torch.int64 if block_size == 16 else torch.int32  # the shard's meta holds int64 tables
    tables = _tables(ctxs, block_size, num_pages, gen).to(device, index)
    lens = torch.tensor(ctxs, dtype=index, device=device)
    q = torch.randn(len(ctxs), HK * group, DIM, generator=gen).to(dtype).to(device)
    got = paged_decode_attention(q, k_cache, v_cache, tables, lens)
    want = reference.paged_decode_attention(q, k_cache, v_cache, tables, lens)
    assert got.dtype == dtype and got.shape == q.shape
    torch.testing.assert_close(got.float(), want.float(), **tolerance(dtype))


@pytest.mark.parametrize("group", [1, 3])
def test_prefill_contiguous_matches_reference(target, group: int) -> None:
    device, dtype = target
    gen = torch.Generator().manual_seed(7 + group)
    lens = [5, 19, 1, 3]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=device)
    t = sum(lens)
    q = torch.randn(t, HK * group, DIM, generator=gen).to(dtype).to(device)
    k = torch.randn(t, HK, DIM, generator=gen).to(dtype).to(device)
    v = torch.randn(t, HK, DIM, generator=gen).to(dtype).to(device)
    got = prefill_attention(q, k, v, cu, max_query_len=max(lens))
    want = reference.prefill_attention(q, k, v, cu)
    torch.testing.assert_close(got.float(), want.float(), **tolerance(dtype))


@pytest.mark.parametrize("group", [1, 3])
def test_chunked_prefill_from_pages_matches_reference(target, group: int) -> None:
    """Rows with earlier tokens already cached: queries sit at ctx - q_len .. ctx - 1 and read every key
    from the pages (a fresh row with ctx == q_len and a decode-like q_len 1 row are in the batch too)."""
    device, dtype = target
    block_size = 4
    gen = torch.Generator().manual_seed(11 + group)
    q_lens, ctxs = [6, 17, 1, 4], [6, 30, 13, 21]
    num_pages = sum(-(-c // block_size) for c in ctxs) + 2
    k_cache, v_cache = _pool(num_pages, block_size, dtype, device, gen)
    tables = _tables(ctxs, block_size, num_pages, gen).to(device)
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=device)
    ctx = torch.tensor(ctxs, dtype=torch.int32, device=device)
    q = torch.randn(sum(q_lens), HK * group, DIM, generator=gen).to(dtype).to(device)
    got = prefill_attention(q, k_cache, v_cache, cu, context_lens=ctx, block_tables=tables)
    want = reference.prefill_attention(q, k_cache, v_cache, cu, context_lens=ctx, block_tables=tables)
    torch.testing.assert_close(got.float(), want.float(), **tolerance(dtype))


def test_paged_prefill_agrees_with_contiguous_when_uncached(target) -> None:
    """The same rows stored in pages or given contiguous give the same attention."""
    device, dtype = target
    block_size = 4
    gen = torch.Generator().manual_seed(3)
    lens = [7, 2]
    num_pages = 6
    k_cache, v_cache = _pool(num_pages, block_size, dtype, device, gen)
    tables = _tables(lens, block_size, num_pages, gen).to(device)
    k = reference._keys(k_cache, tables[0], 7), reference._keys(k_cache, tables[1], 2)
    v = reference._keys(v_cache, tables[0], 7), reference._keys(v_cache, tables[1], 2)
    k, v = torch.cat(k).to(dtype), torch.cat(v).to(dtype)
    cu = torch.tensor([0, 7, 9], dtype=torch.int32, device=device)
    q = torch.randn(9, HK * 3, DIM, generator=gen).to(dtype).to(device)
    paged = prefill_attention(q, k_cache, v_cache, cu, context_lens=cu[1:] - cu[:-1], block_tables=tables)
    contiguous = prefill_attention(q, k, v, cu)
    torch.testing.assert_close(paged.float(), contiguous.float(), **tolerance(dtype))


def test_head_mismatch_is_rejected() -> None:
    q = torch.zeros(1, 3, DIM)
    cache = torch.zeros(2, 4, 2, DIM)
    with pytest.raises(ValueError, match="multiple"):
        paged_decode_attention(q, cache, cache, torch.zeros(1, 1, dtype=torch.int32),
                               torch.ones(1, dtype=torch.int32))
