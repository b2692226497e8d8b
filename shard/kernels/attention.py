"""Paged attention in Triton: decode (one query token per row) and variable-length prefill.

KV layout (shard.model.pool / shard.model.attention): per layer, K and V caches of shape
[num_pages, block_size, kv_heads, head_dim] (any strides; the pool's are views of one flat buffer).
Key position j of a sequence lives in page block_table[j // block_size], offset j % block_size.
GQA: query head h reads KV head h // (num_heads // kv_heads).

Both kernels gather key positions tile by tile straight from the block table (no copies), keep an
online softmax in float32 and write the output in the query dtype. block_size and head_dim need not be
powers of two (tiles are padded and masked).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


def _pow2(n: int, floor: int = 16) -> int:
    return max(floor, triton.next_power_of_2(n))


def _precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: float32 stays IEEE (no TF32 rounding on GPUs); 16-bit types ignore it."""
    return "ieee" if dtype == torch.float32 else "tf32"


@triton.jit
def _decode_kernel(q_ptr, k_ptr, v_ptr, o_ptr, tables_ptr, lens_ptr, sm_scale,
                   stride_qs, stride_qh, stride_kp, stride_kb, stride_kh, stride_vp, stride_vb, stride_vh,
                   stride_os, stride_oh, stride_ts,
                   GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                   GROUP_P: tl.constexpr, D_P: tl.constexpr, BLOCK_N: tl.constexpr,
                   PRECISION: tl.constexpr):
    """One program per (sequence, KV head): its GROUP query heads share every K/V tile read."""
    seq = tl.program_id(0)
    kvh = tl.program_id(1)
    ctx = tl.load(lens_ptr + seq)
    g = tl.arange(0, GROUP_P)
    d = tl.arange(0, D_P)
    heads = kvh * GROUP + g
    q_mask = (g[:, None] < GROUP) & (d[None, :] < HEAD_DIM)
    q = tl.load(q_ptr + seq * stride_qs + heads[:, None] * stride_qh + d[None, :], mask=q_mask, other=0.0)
    m_i = tl.full([GROUP_P], -1.0e30, tl.float32)
    l_i = tl.zeros([GROUP_P], tl.float32)
    acc = tl.zeros([GROUP_P, D_P], tl.float32)
    n = tl.arange(0, BLOCK_N)
    for start in range(0, ctx, BLOCK_N):
        pos = start + n
        valid = pos < ctx
        page = tl.load(tables_ptr + seq * stride_ts + pos // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
        off = (pos % BLOCK_SIZE).to(tl.int64)
        kv_mask = valid[:, None] & (d[None, :] < HEAD_DIM)
        k = tl.load(k_ptr + page[:, None] * stride_kp + off[:, None] * stride_kb + kvh * stride_kh
                    + d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=PRECISION).to(tl.float32)
        s = s * sm_scale  # [GROUP_P, BLOCK_N]
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + page[:, None] * stride_vp + off[:, None] * stride_vb + kvh * stride_vh
                    + d[None, :], mask=kv_mask, other=0.0)
        pv = tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision=PRECISION)
        acc = acc * alpha[:, None] + pv.to(tl.float32)
        m_i = m_new
    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_i[:, None]
    tl.store(o_ptr + seq * stride_os + heads[:, None] * stride_oh + d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=q_mask)


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor,
                           sm_scale: float | None = None, out: torch.Tensor | None = None,
                           block_n: int | None = None) -> torch.Tensor:
    """q [S, Hq, D] (one token per sequence), caches [P, block_size, Hk, D], block_tables [S, max_blocks]
    (int32/int64; entries past a row's context are not read), context_lens [S] (>= 1, keys each row
    attends to, its own new token included, already stored) -> out [S, Hq, D] in q's dtype."""
    s_n, hq, dim = q.shape
    _, block_size, hk, _ = k_cache.shape
    if hq % hk:
        raise ValueError(f"num_heads {hq} is not a multiple of kv_heads {hk}")
    for t in (q, k_cache, v_cache):
        if t.stride(-1) != 1:
            raise ValueError("the head dimension must be contiguous")
    out = torch.empty_like(q) if out is None else out
    if s_n == 0:
        return out
    group = hq // hk
    block_n = block_n or (16 if q.device.type == "cpu" else 64)
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(dim)
    _decode_kernel[(s_n, hk)](
        q, k_cache, v_cache, out, block_tables, context_lens, scale,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), out.stride(0), out.stride(1),
        block_tables.stride(0),
        GROUP=group, HEAD_DIM=dim, BLOCK_SIZE=block_size, GROUP_P=_pow2(group), D_P=_pow2(dim),
        BLOCK_N=block_n, PRECISION=_precision(q.dtype))
    return out


@triton.jit
def _prefill_kernel(q_ptr, k_ptr, v_ptr, o_ptr, cu_ptr, ctx_ptr, tables_ptr, sm_scale,
                    stride_qt, stride_qh, stride_kp, stride_kb, stride_kh, stride_vp, stride_vb, stride_vh,
                    stride_ot, stride_oh, stride_ts,
                    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                    PAGED: tl.constexpr, D_P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    PRECISION: tl.constexpr):
    """One program per (query tile, sequence, query head). Query i of a sequence with q_len new tokens
    and ctx keys sits at position ctx - q_len + i and attends to keys 0..that position. PAGED: keys from
    the block table; else from the contiguous new-token rows k[cu[b] + j] (then ctx == q_len)."""
    tile = tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    kvh = head // GROUP
    q_start = tl.load(cu_ptr + seq)
    q_len = tl.load(cu_ptr + seq + 1) - q_start
    if tile * BLOCK_M < q_len:
        if PAGED:  # noqa: SIM108  (plain if on a constexpr: no ternary in kernels)
            ctx = tl.load(ctx_ptr + seq)
        else:
            ctx = q_len
        m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        d = tl.arange(0, D_P)
        q_mask = (m[:, None] < q_len) & (d[None, :] < HEAD_DIM)
        rows = (q_start + m).to(tl.int64)
        q = tl.load(q_ptr + rows[:, None] * stride_qt + head * stride_qh + d[None, :], mask=q_mask, other=0.0)
        q_pos = ctx - q_len + m
        m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D_P], tl.float32)
        n = tl.arange(0, BLOCK_N)
        end = tl.minimum(ctx, ctx - q_len + (tile + 1) * BLOCK_M)  # keys past the tile's last query: masked
        for start in range(0, end, BLOCK_N):
            pos = start + n
            valid = pos < ctx
            kv_mask = valid[:, None] & (d[None, :] < HEAD_DIM)
            if PAGED:
                page = tl.load(tables_ptr + seq * stride_ts + pos // BLOCK_SIZE, mask=valid, other=0)
                page = page.to(tl.int64)
                off = (pos % BLOCK_SIZE).to(tl.int64)
                k_off = page[:, None] * stride_kp + off[:, None] * stride_kb
                v_off = page[:, None] * stride_vp + off[:, None] * stride_vb
            else:
                kr = (q_start + pos).to(tl.int64)
                k_off = kr[:, None] * stride_kp
                v_off = kr[:, None] * stride_vp
            k = tl.load(k_ptr + k_off + kvh * stride_kh + d[None, :], mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=PRECISION).to(tl.float32)
            s = s * sm_scale  # [BLOCK_M, BLOCK_N]
            s = tl.where(valid[None, :] & (pos[None, :] <= q_pos[:, None]), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(v_ptr + v_off + kvh * stride_vh + d[None, :], mask=kv_mask, other=0.0)
            pv = tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision=PRECISION)
            acc = acc * alpha[:, None] + pv.to(tl.float32)
            m_i = m_new
        l_i = tl.where(l_i == 0.0, 1.0, l_i)
        out = acc / l_i[:, None]
        tl.store(o_ptr + rows[:, None] * stride_ot + head * stride_oh + d[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=q_mask)


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                      max_query_len: int | None = None, context_lens: torch.Tensor | None = None,
                      block_tables: torch.Tensor | None = None, sm_scale: float | None = None,
                      out: torch.Tensor | None = None, block_m: int | None = None,
                      block_n: int | None = None) -> torch.Tensor:
    """Causal attention of a batch of variable-length rows; q [T, Hq, D], rows b = tokens
    cu_seqlens[b]..cu_seqlens[b+1] (int32/int64, [B + 1]).

    Contiguous (block_tables None): k/v [T, Hk, D] are the rows' new tokens, each row attends to its own
    (no cached context). Paged (block_tables [B, max_blocks] and context_lens [B] given): k/v are the
    layer's caches [P, block_size, Hk, D] holding every row's keys 0..ctx-1 (the new ones already
    stored); a row's queries sit at positions ctx - q_len .. ctx - 1 (chunked prefill). max_query_len
    (host int) avoids a device sync. Returns [T, Hq, D] in q's dtype."""
    t_n, hq, dim = q.shape
    hk = k.shape[-2]
    if hq % hk:
        raise ValueError(f"num_heads {hq} is not a multiple of kv_heads {hk}")
    paged = block_tables is not None
    if paged != (context_lens is not None):
        raise ValueError("block_tables and context_lens go together")
    for t in (q, k, v):
        if t.stride(-1) != 1:
            raise ValueError("the head dimension must be contiguous")
    out = torch.empty_like(q) if out is None else out
    batch = cu_seqlens.numel() - 1
    if t_n == 0 or batch == 0:
        return out
    if max_query_len is None:
        max_query_len = int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item())
    cpu = q.device.type == "cpu"
    gpu_block = 64 if q.element_size() == 2 else 32  # float32 64x64 tiles need 180 KB of shared memory
    block_m = block_m or (16 if cpu else gpu_block)
    block_n = block_n or (16 if cpu else gpu_block)
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(dim)
    if paged:
        block_size = k.shape[1]
        ks, vs, ts = (k.stride(0), k.stride(1), k.stride(2)), (v.stride(0), v.stride(1), v.stride(2)), \
            block_tables.stride(0)
        ctx, tables = context_lens, block_tables
    else:
        block_size = 1
        ks, vs, ts = (k.stride(0), 0, k.stride(1)), (v.stride(0), 0, v.stride(1)), 0
        ctx, tables = cu_seqlens, cu_seqlens  # unused by the kernel when not PAGED
    grid = (triton.cdiv(max_query_len, block_m), batch, hq)
    _prefill_kernel[grid](
        q, k, v, out, cu_seqlens, ctx, tables, scale,
        q.stride(0), q.stride(1), *ks, *vs, out.stride(0), out.stride(1), ts,
        GROUP=hq // hk, HEAD_DIM=dim, BLOCK_SIZE=block_size, PAGED=paged, D_P=_pow2(dim),
        BLOCK_M=block_m, BLOCK_N=block_n, PRECISION=_precision(q.dtype))
    return out
