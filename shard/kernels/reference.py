"""Pure-torch references of the Triton kernels (same arguments, same results up to rounding).

Written for clarity, not speed: loops over sequences and segments, math in float32. They import no
triton, so they also document the kernels' contracts on machines without it.
"""

from __future__ import annotations

import math

import torch


def _keys(cache: torch.Tensor, table: torch.Tensor, ctx: int) -> torch.Tensor:
    """cache [P, bs, Hk, D], one block table -> keys 0..ctx-1 as [ctx, Hk, D] (float32)."""
    bs = cache.shape[1]
    pos = torch.arange(ctx, device=cache.device)
    pages = table.to(cache.device).long()[pos // bs]
    return cache[pages, pos % bs].float()


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor,
            scale: float) -> torch.Tensor:
    """q [n, Hq, D], k/v [ctx, Hk, D], causal by position (key j visible to query at p iff j <= p)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    s = torch.einsum("qhd,khd->hqk", q.float(), k) * scale
    allowed = torch.arange(k.shape[0], device=q.device)[None, :] <= q_pos[:, None]
    s = s.masked_fill(~allowed[None], float("-inf"))
    return torch.einsum("hqk,khd->qhd", torch.softmax(s, dim=-1), v)


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor,
                           sm_scale: float | None = None) -> torch.Tensor:
    """See shard.kernels.attention.paged_decode_attention."""
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    out = torch.empty_like(q)
    for s in range(q.shape[0]):
        ctx = int(context_lens[s])
        k, v = _keys(k_cache, block_tables[s], ctx), _keys(v_cache, block_tables[s], ctx)
        out[s] = _attend(q[s:s + 1], k, v, torch.tensor([ctx - 1], device=q.device), scale)[0].to(q.dtype)
    return out


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                      context_lens: torch.Tensor | None = None, block_tables: torch.Tensor | None = None,
                      sm_scale: float | None = None) -> torch.Tensor:
    """See shard.kernels.attention.prefill_attention."""
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    out = torch.empty_like(q)
    for b in range(cu_seqlens.numel() - 1):
        s0, s1 = int(cu_seqlens[b]), int(cu_seqlens[b + 1])
        if block_tables is None:
            kb, vb, ctx = k[s0:s1].float(), v[s0:s1].float(), s1 - s0
        else:
            ctx = int(context_lens[b])
            kb, vb = _keys(k, block_tables[b], ctx), _keys(v, block_tables[b], ctx)
        q_pos = torch.arange(ctx - (s1 - s0), ctx, device=q.device)
        out[s0:s1] = _attend(q[s0:s1], kb, vb, q_pos, scale).to(q.dtype)
    return out


def sgmv_lora(x: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]], scales: list[float],
              row_adapter: torch.Tensor, out: torch.Tensor, col_start: int = 0) -> torch.Tensor:
    """out[t, col_start:col_start + out_dim] += scale * (x[t] @ A.T) @ B.T with (A, B) = pairs[slot],
    slot = row_adapter[t] (-1: untouched). In place on a copy of out; returns it."""
    out = out.clone()
    for t in range(x.shape[0]):
        slot = int(row_adapter[t])
        if slot < 0:
            continue
        a, b = pairs[slot]
        y = (x[t].float() @ a.float().T) * scales[slot]
        cols = slice(col_start, col_start + b.shape[0])
        out[t, cols] = (out[t, cols].float() + y @ b.float().T).to(out.dtype)
    return out
