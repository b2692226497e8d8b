"""Paged attention in pure torch: prefill and decode sequences in one batch, GQA, any block tables.

Per layer: the new K/V of every token are written into its slot, then
- decode rows (query_len == 1) attend together: one gather of their padded slot table
  [S_dec, max_ctx] and one scaled_dot_product_attention call with a length mask;
- prefill rows attend one sequence at a time: causal over their own new K/V when the sequence has
  no earlier context, else over the gathered context with an offset causal mask.
`AttentionMeta` holds every index tensor, built once per forward and shared by all layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True, slots=True)
class PrefillSeq:
    start: int                       # first token row in the batch
    query_len: int
    context_slots: torch.Tensor | None  # [ctx] slots of the whole context, None when ctx == query_len
    mask: torch.Tensor | None        # [query_len, ctx] bool (True = attend), None when ctx == query_len


@dataclass(frozen=True, slots=True)
class AttentionMeta:
    slots: torch.Tensor              # [T] slot of each new token
    decode_rows: torch.Tensor        # [S_dec] token rows of the decode sequences
    decode_slots: torch.Tensor       # [S_dec, max_ctx] context slots (padded with its first slot, masked)
    decode_mask: torch.Tensor        # [S_dec, 1, 1, max_ctx] bool
    prefills: tuple[PrefillSeq, ...]

    @classmethod
    def build(cls, slots: torch.Tensor, query_lens: list[int], context_lens: list[int],
              block_tables: list[list[int]], block_size: int, device: torch.device) -> AttentionMeta:
        dec_rows, dec_ctx, prefills = [], [], []
        start = 0
        for q, ctx, table in zip(query_lens, context_lens, block_tables, strict=True):
            if q == 1:
                dec_rows.append(start)
                dec_ctx.append(_context_slots(table, ctx, block_size))
            elif ctx == q:
                prefills.append(PrefillSeq(start, q, None, None))
            else:
                ctx_slots = torch.tensor(_context_slots(table, ctx, block_size), device=device)
                keys = torch.arange(ctx, device=device)[None, :]
                queries = torch.arange(ctx - q, ctx, device=device)[:, None]
                prefills.append(PrefillSeq(start, q, ctx_slots, keys <= queries))
            start += q
        width = max((len(c) for c in dec_ctx), default=0)
        padded = [c + c[:1] * (width - len(c)) for c in dec_ctx]  # pad with an own slot (masked)
        lens = torch.tensor([len(c) for c in dec_ctx], dtype=torch.int64)
        mask = torch.arange(width)[None, :] < lens[:, None]
        table = torch.tensor(padded, dtype=torch.int64, device=device).view(len(dec_ctx), width)
        return cls(slots=slots, decode_rows=torch.tensor(dec_rows, dtype=torch.int64, device=device),
                   decode_slots=table,
                   decode_mask=mask.to(device)[:, None, None, :], prefills=tuple(prefills))


def _context_slots(table: list[int], ctx: int, block_size: int) -> list[int]:
    if len(table) * block_size < ctx:
        raise ValueError(f"block table of {len(table)} blocks cannot hold {ctx} tokens")
    return [table[i // block_size] * block_size + i % block_size for i in range(ctx)]


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, meta: AttentionMeta) -> torch.Tensor:
    """q [T, Hq, D], k/v [T, Hkv, D] (new tokens) -> [T, Hq * D]. Writes k/v into their slots first."""
    k_cache[meta.slots] = k
    v_cache[meta.slots] = v
    out = torch.empty_like(q)
    if meta.decode_rows.numel():
        qd = q[meta.decode_rows][:, :, None, :]  # [S, Hq, 1, D]
        kd = k_cache[meta.decode_slots].transpose(1, 2)  # [S, Hkv, ctx, D]
        vd = v_cache[meta.decode_slots].transpose(1, 2)
        o = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=meta.decode_mask, enable_gqa=True)
        out[meta.decode_rows] = o[:, :, 0, :]
    for p in meta.prefills:
        rows = slice(p.start, p.start + p.query_len)
        qp = q[rows].transpose(0, 1)[None]  # [1, Hq, q, D]
        if p.context_slots is None:
            kp, vp = k[rows].transpose(0, 1)[None], v[rows].transpose(0, 1)[None]
            o = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=True)
        else:
            kp = k_cache[p.context_slots].transpose(0, 1)[None]  # [1, Hkv, ctx, D]
            vp = v_cache[p.context_slots].transpose(0, 1)[None]
            o = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=p.mask, enable_gqa=True)
        out[rows] = o[0].transpose(0, 1)
    return out.reshape(q.shape[0], -1)
