"""Paged attention: prefill and decode sequences in one batch, GQA, any block tables.

Caches are per layer [pages, block_size, kv_heads, head_dim] views of the pool. Per layer: the new K/V
of every token are written into its slot (page, offset) (`store_kv`, or a backend's fused kernel), then
(torch ops here; shard.model.cpu_backend has the C kernel that reads decode rows' K/V straight from the
pages of each block table)
- decode rows (query_len == 1) attend together: one gather of their padded block tables
  [S_dec, max_blocks] (whole contiguous blocks) and one scaled_dot_product_attention with a length mask;
- prefill rows attend one sequence at a time: causal over their own new K/V when the sequence has
  no earlier context, else over its gathered blocks with an offset causal mask.
`AttentionMeta` holds every index tensor, built once per forward and shared by all layers.
Gathered blocks include slots past a sequence's context; they are masked out, and since pool contents
are always finite (zero-initialised, KV from finite activations, adapters validated finite) they
contribute exactly zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True, slots=True)
class PrefillSeq:
    start: int                        # first token row in the batch
    query_len: int
    blocks: torch.Tensor | None       # [n_blocks] its block table, None when ctx == query_len
    mask: torch.Tensor | None         # [query_len, n_blocks * block_size] additive (0 / -inf)


@dataclass(frozen=True, slots=True)
class AttentionMeta:
    slots: torch.Tensor               # [T] KV slot of each new token (page * block_size + offset)
    slot_pages: torch.Tensor          # [T] page of each new token's slot
    slot_offsets: torch.Tensor        # [T] offset in the page
    decode_rows: torch.Tensor         # [S_dec] token rows of the decode sequences
    decode_blocks: torch.Tensor       # [S_dec, max_blocks] block tables (padded with own first block)
    decode_mask: torch.Tensor         # [S_dec, 1, 1, max_blocks * block_size] additive (0 / -inf)
    decode_lens: torch.Tensor         # [S_dec] int64 context length of each decode sequence
    prefills: tuple[PrefillSeq, ...]
    row_blocks: torch.Tensor          # [T, max_blocks] every row's block table (padded like decode_blocks)
    row_lens: torch.Tensor            # [T] int64 keys each row attends to (its position + 1): causal

    @classmethod
    def build(cls, slots: torch.Tensor, query_lens: list[int], context_lens: list[int],
              block_tables: list[list[int]], block_size: int, device: torch.device,
              dtype: torch.dtype) -> AttentionMeta:
        dec_rows, dec_tables, dec_lens, prefills, seq_tables = [], [], [], [], []
        start = 0
        for q, ctx, table in zip(query_lens, context_lens, block_tables, strict=True):
            need = -(-ctx // block_size)
            if len(table) < need:
                raise ValueError(f"block table of {len(table)} blocks cannot hold {ctx} tokens")
            seq_tables.append(table[:need])
            if q == 1:
                dec_rows.append(start)
                dec_tables.append(table[:need])
                dec_lens.append(ctx)
            elif ctx == q:
                prefills.append(PrefillSeq(start, q, None, None))
            else:
                keys = torch.arange(need * block_size, device=device)[None, :]
                queries = torch.arange(ctx - q, ctx, device=device)[:, None]
                prefills.append(PrefillSeq(start, q, torch.tensor(table[:need], device=device),
                                           _additive(keys <= queries, dtype)))
            start += q
        width = max((len(t) for t in dec_tables), default=0)
        padded = [t + t[:1] * (width - len(t)) for t in dec_tables]
        lens = torch.tensor(dec_lens, dtype=torch.int64)
        mask = torch.arange(width * block_size)[None, :] < lens[:, None]
        tables = torch.tensor(padded, dtype=torch.int64, device=device).view(len(padded), width)
        slots = slots.to(device)
        row_blocks, row_lens = tables, lens.to(device)
        if prefills:  # each prefill row is a query over its sequence's blocks up to its own position
            w = max(len(t) for t in seq_tables)
            per_seq = torch.tensor([t + t[:1] * (w - len(t)) for t in seq_tables], dtype=torch.int64)
            row_blocks = per_seq.repeat_interleave(torch.tensor(query_lens), dim=0).to(device)
            row_lens = torch.cat([torch.arange(c - q + 1, c + 1, dtype=torch.int64)
                                  for q, c in zip(query_lens, context_lens, strict=True)]).to(device)
        return cls(slots=slots, slot_pages=slots // block_size, slot_offsets=slots % block_size,
                   decode_rows=torch.tensor(dec_rows, dtype=torch.int64, device=device),
                   decode_blocks=tables,
                   decode_mask=_additive(mask.to(device), dtype)[:, None, None, :],
                   decode_lens=lens.to(device), prefills=tuple(prefills), row_blocks=row_blocks,
                   row_lens=row_lens)


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool mask -> additive float mask, built once per forward instead of inside every SDPA call."""
    zeros = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return zeros.masked_fill_(~allowed, float("-inf"))


def _gather(cache: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """cache [P, bs, Hk, D], blocks [..., n] -> [..., Hk, n * bs, D] (whole blocks, contiguous copies)."""
    g = cache.index_select(0, blocks.flatten())  # [N, bs, Hk, D]; index_select beats cache[blocks] on CPU
    g = g.view(*blocks.shape[:-1], blocks.shape[-1] * cache.shape[1], *cache.shape[2:])  # [..., n*bs, Hk, D]
    return g.transpose(-3, -2)


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             meta: AttentionMeta) -> None:
    """k/v [T, Hk, D] (the new tokens) into their KV slots."""
    k_cache[meta.slot_pages, meta.slot_offsets] = k
    v_cache[meta.slot_pages, meta.slot_offsets] = v


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, meta: AttentionMeta) -> torch.Tensor:
    """q [T, Hq, D], k/v [T, Hk, D] (new tokens, already in their slots) -> [T, Hq * D]."""
    if not meta.prefills:  # decode only: every row is a decode row, in order
        o = F.scaled_dot_product_attention(q[:, :, None, :], _gather(k_cache, meta.decode_blocks),
                                           _gather(v_cache, meta.decode_blocks), attn_mask=meta.decode_mask,
                                           enable_gqa=True)  # [S, Hq, 1, D]
        return o.reshape(q.shape[0], -1)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if meta.decode_rows.numel():
        o = F.scaled_dot_product_attention(q[meta.decode_rows][:, :, None, :],
                                           _gather(k_cache, meta.decode_blocks),
                                           _gather(v_cache, meta.decode_blocks), attn_mask=meta.decode_mask,
                                           enable_gqa=True)
        out[meta.decode_rows] = o[:, :, 0, :]
    prefill_attention(q, k, v, k_cache, v_cache, meta, out)
    return out.reshape(q.shape[0], -1)


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                      v_cache: torch.Tensor, meta: AttentionMeta, out: torch.Tensor) -> None:
    """The prefill rows of out [T, Hq, D]: each sequence causal over its own new K/V (no earlier
    context) or over its gathered blocks with an offset causal mask."""
    for p in meta.prefills:
        rows = slice(p.start, p.start + p.query_len)
        qp = q[rows].transpose(0, 1)[None]  # [1, Hq, q, D]
        if p.blocks is None:
            kp, vp = k[rows].transpose(0, 1)[None], v[rows].transpose(0, 1)[None]
            o = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=True)
        else:
            kp, vp = _gather(k_cache, p.blocks)[None], _gather(v_cache, p.blocks)[None]  # [1, Hk, ctx, D]
            o = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=p.mask, enable_gqa=True)
        out[rows] = o[0].transpose(0, 1)
