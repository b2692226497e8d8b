"""Float32 CPU kernels for the decode step outside the matmuls (cpu_step.c): RMSNorm with the residual add,
SiLU-and-multiply, rotary plus the KV-slot write, and paged decode attention straight from the pool.

Why: at decode sizes these are ~30 small torch ops per layer; their dispatch costs more than their
arithmetic, and the OpenMP-parallel ones (index_select of the KV blocks, SDPA) stall for a time slice
when the machine is busy. The kernels run single-threaded in the caller.

Contract: every method of `StepKernels` returns None (or False) when its kernel does not apply (not CPU
float32, unsupported strides or head sizes) and the caller keeps its torch path. Compiled into
shard.model.cpu_kernels' library (one unit) and reached through its `CpuKernels` object. A page index
outside the pool raises IndexError before any KV slot is written or read.
"""

from __future__ import annotations

import ctypes
import math

import torch

MAX_GROUP, MAX_HEAD_DIM = 16, 256  # query heads per KV head, head dim (as cpu_step.c)


def declare(lib: ctypes.CDLL) -> None:
    """Types the step kernels' entry points in the loaded library."""
    i64, i32, fp, f32 = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p, ctypes.c_float
    lib.cs_rmsnorm.argtypes = [fp, i64, fp, i64, fp, fp, i64, i64, i64, f32]
    lib.cs_silu_mul.argtypes = [fp, fp, i64, i64, i64, fp, i64]
    lib.cs_rope_store.argtypes = [fp, i64, i64, i32, i32, i32, fp, fp, i64, fp, fp, fp, i64, i64, i64, i64]
    lib.cs_decode_attn.argtypes = [fp, i64, i64, fp, i32, i32, i32, fp, fp, i64, i64, i64, i64, fp,
                                   i64, fp, fp, i64, f32]
    lib.cs_lse_argmax.argtypes = [fp, i64, i64, i64, fp, fp]
    for f in (lib.cs_rmsnorm, lib.cs_silu_mul, lib.cs_rope_store, lib.cs_decode_attn, lib.cs_lse_argmax):
        f.restype = i32


def _f32(t: torch.Tensor) -> bool:
    return t.is_cpu and t.dtype is torch.float32 and t.stride(-1) == 1


def _index(t: torch.Tensor) -> bool:
    return t.is_cpu and t.dtype is torch.int64 and t.is_contiguous()


def _heads(t: torch.Tensor, d: int) -> bool:
    """[T, H, D] with heads adjacent in each row."""
    return t.dim() == 3 and _f32(t) and t.shape[2] == d and t.stride(1) == d


def _cache_ok(c: torch.Tensor, hk: int, d: int) -> bool:
    """[pages, block_size, Hk, D] with each slot's heads contiguous."""
    return c.dim() == 4 and _f32(c) and c.shape[2:] == (hk, d) and c.stride(2) == d


def _same_layout(k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    return (k_cache.shape == v_cache.shape and k_cache.stride() == v_cache.stride()
            and v_cache.dtype is torch.float32 and v_cache.is_cpu)


class StepKernels:
    """The step kernels of the loaded library `lib` (typed by `declare`); shard.model.cpu_kernels.CpuKernels
    is one. Each method returns None (or False) when its kernel does not apply."""

    lib: ctypes.CDLL

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float,
                 residual: torch.Tensor | None = None) -> torch.Tensor | None:
        """weight * x / rms(x) for x [M, H]; with `residual`: residual += x IN PLACE first and the norm is of
        the sum. None when the kernel does not apply (then nothing was written)."""
        if not (x.dim() == 2 and _f32(x) and _f32(weight) and weight.is_contiguous() and not x.requires_grad):
            return None
        if residual is not None and not (_f32(residual) and residual.shape == x.shape
                                         and residual.dim() == 2):
            return None
        lib = self.lib
        m, h = x.shape
        out = torch.empty(m, h, dtype=torch.float32)
        res, ldr = (residual.data_ptr(), residual.stride(0)) if residual is not None else (None, 0)
        lib.cs_rmsnorm(x.data_ptr(), x.stride(0), res, ldr, weight.data_ptr(), out.data_ptr(), h, m, h, eps)
        return out

    def silu_mul(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor | None:
        """silu(gate) * up for two [M, I] views with the same row stride (the halves of one packed matmul)."""
        if not (gate.dim() == 2 and _f32(gate) and _f32(up) and gate.shape == up.shape
                and gate.stride(0) == up.stride(0) and not gate.requires_grad):
            return None
        lib = self.lib
        m, i = gate.shape
        out = torch.empty(m, i, dtype=torch.float32)
        lib.cs_silu_mul(gate.data_ptr(), up.data_ptr(), gate.stride(0), m, i, out.data_ptr(), i)
        return out

    def rope_store(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
                   sin: torch.Tensor,
                   slots: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
        """Rotary on q [T, Hq, D] and k [T, Hk, D] IN PLACE, then k and v [T, Hk, D] into their KV slots.

        q, k, v must be adjacent column blocks of one packed row (as the qkv matmul makes them); cos/sin
        [T, 1, D]. False when the kernel does not apply (then nothing was written)."""
        t, hq, d = q.shape
        hk = k.shape[1]
        row = q.stride(0)
        if not (_heads(q, d) and _heads(k, d) and _heads(v, d) and k.stride(0) == row and v.stride(0) == row
                and k.data_ptr() == q.data_ptr() + 4 * hq * d and v.data_ptr() == k.data_ptr() + 4 * hk * d
                and _f32(cos) and _f32(sin) and cos.stride(0) == sin.stride(0) and cos.shape[-1] == d
                and _index(slots)
                and _cache_ok(k_cache, hk, d) and _same_layout(k_cache, v_cache) and len(slots) == t
                and not q.requires_grad):
            return False
        lib = self.lib
        rc = lib.cs_rope_store(q.data_ptr(), row, t, hq, hk, d, cos.data_ptr(), sin.data_ptr(), cos.stride(0),
                               slots.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), k_cache.stride(0),
                               k_cache.stride(1), k_cache.shape[1], k_cache.shape[0])
        if rc != 0:
            raise IndexError(f"a KV slot is outside the pool of {k_cache.shape[0]} pages")
        return True

    def decode_attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         tables: torch.Tensor,
                         lens: torch.Tensor, rows: torch.Tensor | None,
                         out: torch.Tensor | None) -> torch.Tensor | None:
        """softmax(q k^T / sqrt(D)) v for decode rows, over each sequence's first lens[s] slots in its blocks.

        q [T, Hq, D] (row rows[s] is sequence s's query; rows None: row s); tables [S, n] int64 block tables,
        lens [S] int64. Writes rows of out [T, Hq * D] (allocated when None) and returns it; None when the
        kernel does not apply."""
        t, hq, d = q.shape
        hk = k_cache.shape[2] if k_cache.dim() == 4 else 0
        s = lens.shape[0]
        if not (_heads(q, d) and _cache_ok(k_cache, hk, d) and _same_layout(k_cache, v_cache) and hq % hk == 0
                and hq // hk <= MAX_GROUP and d % 8 == 0 and d <= MAX_HEAD_DIM and not q.requires_grad
                and _index(tables) and _index(lens) and (rows is None or _index(rows))
                and tables.dim() == 2 and tables.shape[0] == s and (rows is not None or s == t)):
            return None
        if out is not None and not (_f32(out) and out.shape == (t, hq * d) and out.is_contiguous()):
            return None
        lib = self.lib
        out = torch.empty(t, hq * d, dtype=torch.float32) if out is None else out
        row_ptr = rows.data_ptr() if rows is not None else None
        rc = lib.cs_decode_attn(q.data_ptr(), q.stride(0), s, row_ptr, hq, hk, d, k_cache.data_ptr(),
                                v_cache.data_ptr(), k_cache.stride(0), k_cache.stride(1), k_cache.shape[1],
                                k_cache.shape[0], tables.data_ptr(), tables.shape[1], lens.data_ptr(),
                                out.data_ptr(), out.stride(0), 1.0 / math.sqrt(d))
        if rc != 0:
            raise IndexError(f"a block table holds a page outside the pool of {k_cache.shape[0]} pages, "
                             "or is "
                             "shorter than its context")
        return out

    def lse_argmax(self, logits: torch.Tensor) -> tuple[torch.Tensor, list[int]] | None:
        """(torch.logsumexp(logits, -1), torch.argmax(logits, -1).tolist()) for logits [S, V] float32 in one
        pass per row; None when the kernel does not apply or a row holds a NaN."""
        if not (logits.dim() == 2 and _f32(logits) and not logits.requires_grad):
            return None
        lib = self.lib
        s, v = logits.shape
        lse, arg = torch.empty(s, dtype=torch.float32), torch.empty(s, dtype=torch.int64)
        if lib.cs_lse_argmax(logits.data_ptr(), logits.stride(0), s, v, lse.data_ptr(), arg.data_ptr()) != 0:
            return None
        return lse, arg.tolist()
