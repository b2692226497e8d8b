"""Multi-LoRA SGMV in Triton: y += (scale * (x @ A.T)) @ B.T for segments of rows, each its own adapter.

Weight layout (shard.lora.store, mirrored): an adapter's A for one (layer, module) is a row-major
[rank, in] block and its B a row-major [out, rank] block, both stored somewhere in one flat buffer (the
page pool viewed in the adapter storage dtype, `pool.buffer.view(dtype)`). A kernel call sees, per
adapter slot, the element offset of A and of B in that buffer, the rank and the scale (`LoraTable`,
built by `lora_table` from the store's tensors: in place when they are views of the buffer, else
packed into a side buffer). Ranks differ per adapter; the kernels loop over the rank in tiles up to each
adapter's own rank, so nothing is padded to the largest rank.

Segments: entries seg_start[s] .. seg_start[s] + seg_len[s] of `rows` (token row indices) use adapter
slot seg_adapter[s]. Rows in no segment (base rows) are not touched. A per-row (BGMV) batch is turned
into segments by `segments_from_row_adapters`.

shrink: y[row, :rank] = scale * x[row] @ A.T (y float32 [T, max_rank]; columns past a row's rank are
not written). expand: out[row, col_start:col_start + out_dim] += y[row, :rank] @ B.T (rank: B's
columns, which differ from A's rows only for a column-parallel TP slice, see `lora_table`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@dataclass(frozen=True, slots=True)
class LoraTable:
    """Per adapter slot, where its A [rank, in] and B [out, rank] start in `weights` (flat)."""

    weights: torch.Tensor      # flat, the adapters' storage dtype
    a_offsets: torch.Tensor    # [n] int64 element offsets
    b_offsets: torch.Tensor    # [n] int64
    ranks: torch.Tensor        # [n] int32 rows of A (what shrink writes per row)
    scales: torch.Tensor       # [n] float32
    max_rank: int
    b_ranks: torch.Tensor      # [n] int32 columns of B (what expand reads per row); = ranks without TP
    max_b_rank: int


@dataclass(frozen=True, slots=True)
class Segments:
    """Rows grouped by adapter slot (see the module docstring)."""

    rows: torch.Tensor         # [N] int64 token rows
    seg_start: torch.Tensor    # [S] int32 first entry of `rows`
    seg_len: torch.Tensor      # [S] int32
    seg_adapter: torch.Tensor  # [S] int32 adapter slot
    max_len: int               # host copy of seg_len.max() (grid size, no device sync in the launch)


def _offset_in(t: torch.Tensor, buf: torch.Tensor) -> int | None:
    """Element offset of contiguous `t` inside flat `buf`, or None when it is not a view of it."""
    if t.dtype != buf.dtype or not t.is_contiguous() or t.device != buf.device:
        return None
    size = buf.element_size()
    delta = t.data_ptr() - buf.data_ptr()
    if delta < 0 or delta % size or delta // size + t.numel() > buf.numel():
        return None
    return delta // size


def lora_table(pairs: list[tuple[torch.Tensor, torch.Tensor]], scales: list[float],
               buffer: torch.Tensor | None = None, tp_split: bool = False) -> LoraTable:
    """The kernel table of adapters [(A [r, in], B [out, r])] for one (layer, module), in slot order.
    When every tensor is a view of `buffer` (the pool seen in their dtype, e.g.
    `pool.buffer.view(dtype)`) the table points into it in place; otherwise (copies of tensors that
    straddled non-adjacent pages, adapters held outside the pool) all are packed into one new buffer.
    tp_split: a column-parallel TP slice (shard.lora.store), A [r_local, in] and B [out_local, r]:
    shrink writes r_local columns, the caller all-gathers them into y [T, r], expand reads r."""
    if not pairs:
        raise ValueError("no adapters")
    dtype, device = pairs[0][0].dtype, pairs[0][0].device
    offs: list[int | None] = []
    if buffer is not None:
        flat = buffer.reshape(-1)
        offs = [_offset_in(t, flat) for pair in pairs for t in pair]
    if buffer is None or any(o is None for o in offs):
        flat = torch.cat([t.reshape(-1).to(dtype) for pair in pairs for t in pair])
        offs, pos = [], 0
        for pair in pairs:
            for t in pair:
                offs.append(pos)
                pos += t.numel()
    ranks = [a.shape[0] for a, _ in pairs]
    b_ranks = [b.shape[1] for _, b in pairs]
    if not tp_split:
        for r, rb in zip(ranks, b_ranks, strict=True):
            if r != rb:
                raise ValueError(f"A has rank {r} but B has {rb} columns (tp_split=True for a "
                                 "column-parallel TP slice)")
    return LoraTable(flat, torch.tensor(offs[0::2], dtype=torch.int64, device=device),
                     torch.tensor(offs[1::2], dtype=torch.int64, device=device),
                     torch.tensor(ranks, dtype=torch.int32, device=device),
                     torch.tensor(scales, dtype=torch.float32, device=device), max(ranks),
                     torch.tensor(b_ranks, dtype=torch.int32, device=device), max(b_ranks))


def segments_from_runs(runs: list[tuple[int, int, int]], device: torch.device | str) -> Segments:
    """Contiguous token runs [(first row, rows, adapter slot)] (a prefill batch's sequences) ->
    Segments, built on the host without a device sync; rows of no run are base rows."""
    rows = [r for start, n, _ in runs for r in range(start, start + n)]
    starts, pos = [], 0
    for _, n, _ in runs:
        starts.append(pos)
        pos += n
    return Segments(torch.tensor(rows, dtype=torch.int64, device=device),
                    torch.tensor(starts, dtype=torch.int32, device=device),
                    torch.tensor([n for _, n, _ in runs], dtype=torch.int32, device=device),
                    torch.tensor([slot for _, _, slot in runs], dtype=torch.int32, device=device),
                    max((n for _, n, _ in runs), default=0))


def segments_from_row_adapters(row_adapter: torch.Tensor) -> Segments:
    """Per-row adapter slots [T] (-1: base row, no LoRA) -> segments of the rows grouped by slot
    (rows of one slot keep their order). One host sync (segment count)."""
    order = torch.argsort(row_adapter, stable=True)
    slots = row_adapter[order]
    keep = slots >= 0
    order, slots = order[keep], slots[keep]
    uniq, counts = torch.unique_consecutive(slots, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    max_len = int(counts.max().item()) if counts.numel() else 0
    return Segments(order.to(torch.int64), starts.to(torch.int32), counts.to(torch.int32),
                    uniq.to(torch.int32), max_len)


@triton.jit
def _shrink_kernel(x_ptr, w_ptr, y_ptr, a_off_ptr, rank_ptr, scale_ptr, rows_ptr, start_ptr, len_ptr,
                   adapter_ptr, in_dim, stride_x, stride_y,
                   BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
                   PRECISION: tl.constexpr):
    seg = tl.program_id(0)
    tile = tl.program_id(1)
    n_rows = tl.load(len_ptr + seg)
    if tile * BLOCK_M < n_rows:
        slot = tl.load(adapter_ptr + seg)
        rank = tl.load(rank_ptr + slot)
        scale = tl.load(scale_ptr + slot)
        a_base = w_ptr + tl.load(a_off_ptr + slot)
        m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        m_ok = m < n_rows
        rows = tl.load(rows_ptr + tl.load(start_ptr + seg) + m, mask=m_ok, other=0).to(tl.int64)
        kk = tl.arange(0, BLOCK_K)
        rr = tl.arange(0, BLOCK_R)
        for r0 in range(0, rank, BLOCK_R):  # the loop bound is this adapter's own rank
            r = r0 + rr
            r_ok = r < rank
            acc = tl.zeros([BLOCK_M, BLOCK_R], tl.float32)
            for k0 in range(0, in_dim, BLOCK_K):
                k = k0 + kk
                k_ok = k < in_dim
                x = tl.load(x_ptr + rows[:, None] * stride_x + k[None, :], mask=m_ok[:, None] & k_ok[None, :],
                            other=0.0)
                a = tl.load(a_base + r[None, :].to(tl.int64) * in_dim + k[:, None],
                            mask=r_ok[None, :] & k_ok[:, None], other=0.0)  # A.T tile [BLOCK_K, BLOCK_R]
                acc += tl.dot(x, a.to(x.dtype), input_precision=PRECISION).to(tl.float32)
            tl.store(y_ptr + rows[:, None] * stride_y + r[None, :], acc * scale,
                     mask=m_ok[:, None] & r_ok[None, :])


@triton.jit
def _expand_kernel(y_ptr, w_ptr, o_ptr, b_off_ptr, rank_ptr, rows_ptr, start_ptr, len_ptr, adapter_ptr,
                   out_dim, col_start, stride_y, stride_o,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
                   PRECISION: tl.constexpr):
    seg = tl.program_id(0)
    tile = tl.program_id(1)
    col_tile = tl.program_id(2)
    n_rows = tl.load(len_ptr + seg)
    if tile * BLOCK_M < n_rows:
        slot = tl.load(adapter_ptr + seg)
        rank = tl.load(rank_ptr + slot)
        b_base = w_ptr + tl.load(b_off_ptr + slot)
        m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        m_ok = m < n_rows
        rows = tl.load(rows_ptr + tl.load(start_ptr + seg) + m, mask=m_ok, other=0).to(tl.int64)
        n = col_tile * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = n < out_dim
        rr = tl.arange(0, BLOCK_R)
        o_ptrs = o_ptr + rows[:, None] * stride_o + col_start + n[None, :]
        o_mask = m_ok[:, None] & n_ok[None, :]
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for r0 in range(0, rank, BLOCK_R):
            r = r0 + rr
            r_ok = r < rank
            y = tl.load(y_ptr + rows[:, None] * stride_y + r[None, :], mask=m_ok[:, None] & r_ok[None, :],
                        other=0.0)
            b = tl.load(b_base + n[None, :].to(tl.int64) * rank + r[:, None],
                        mask=n_ok[None, :] & r_ok[:, None], other=0.0)  # B.T tile [BLOCK_R, BLOCK_N]
            acc += tl.dot(y.to(o_ptr.dtype.element_ty), b.to(o_ptr.dtype.element_ty),
                          input_precision=PRECISION).to(tl.float32)
        cur = tl.load(o_ptrs, mask=o_mask, other=0.0).to(tl.float32)
        tl.store(o_ptrs, (cur + acc).to(o_ptr.dtype.element_ty), mask=o_mask)


def _precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: float32 stays IEEE (no TF32 rounding on GPUs); 16-bit types ignore it."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _blocks(device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_K, BLOCK_N, BLOCK_R). CPU (the interpreter, whose cost is per operation, not per
    element): wide tiles, few loop trips."""
    return (16, 64, 64, 64) if device.type == "cpu" else (16, 64, 64, 16)


def sgmv_shrink(x: torch.Tensor, table: LoraTable, segs: Segments,
                y: torch.Tensor | None = None) -> torch.Tensor:
    """x [T, in] -> y float32 [T, table.max_rank]: y[row, :rank] = scale * x[row] @ A.T for the rows of
    every segment (other entries of a fresh y are zero)."""
    if y is None:
        y = torch.zeros(x.shape[0], table.max_rank, dtype=torch.float32, device=x.device)
    if segs.seg_len.numel() == 0 or segs.max_len == 0:
        return y
    if x.stride(1) != 1 or y.stride(1) != 1:
        raise ValueError("x and y rows must be contiguous")
    bm, bk, _, br = _blocks(x.device)
    grid = (segs.seg_len.numel(), triton.cdiv(segs.max_len, bm))
    _shrink_kernel[grid](x, table.weights, y, table.a_offsets, table.ranks, table.scales, segs.rows,
                         segs.seg_start, segs.seg_len, segs.seg_adapter, x.shape[1], x.stride(0), y.stride(0),
                         BLOCK_M=bm, BLOCK_R=br, BLOCK_K=bk, PRECISION=_precision(x.dtype))
    return y


def sgmv_expand(y: torch.Tensor, table: LoraTable, segs: Segments, out: torch.Tensor, out_dim: int,
                col_start: int = 0) -> torch.Tensor:
    """out[row, col_start:col_start + out_dim] += y[row, :rank] @ B.T (B [out_dim, rank]) in place, for
    the rows of every segment; other rows are untouched. Returns out."""
    if segs.seg_len.numel() == 0 or segs.max_len == 0:
        return out
    if out.stride(1) != 1 or y.stride(1) != 1:
        raise ValueError("out and y rows must be contiguous")
    if col_start + out_dim > out.shape[1]:
        raise ValueError(f"columns {col_start}..{col_start + out_dim} are outside out {tuple(out.shape)}")
    bm, _, bn, br = _blocks(out.device)
    grid = (segs.seg_len.numel(), triton.cdiv(segs.max_len, bm), triton.cdiv(out_dim, bn))
    _expand_kernel[grid](y, table.weights, out, table.b_offsets, table.b_ranks, segs.rows, segs.seg_start,
                         segs.seg_len, segs.seg_adapter, out_dim, col_start, y.stride(0), out.stride(0),
                         BLOCK_M=bm, BLOCK_N=bn, BLOCK_R=br, PRECISION=_precision(out.dtype))
    return out


def sgmv_lora(x: torch.Tensor, table: LoraTable, segs: Segments, out: torch.Tensor, out_dim: int,
              col_start: int = 0) -> torch.Tensor:
    """Shrink then expand: out[rows, cols] += (scale * x @ A.T) @ B.T per segment; returns out."""
    return sgmv_expand(sgmv_shrink(x, table, segs), table, segs, out, out_dim, col_start)
