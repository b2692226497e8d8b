"""Fused RMSNorm for the Triton backend: one kernel per norm instead of torch's chain of eight (float,
square, mean, add, rsqrt, multiply, cast, multiply), with the residual add fused in (add_rms_norm).

TorchBackend's arithmetic (shard.model.backend.torch_rms_norm, transformers' LlamaRMSNorm) up to the
order of the float32 sum: x + residual is rounded to the activation dtype, the normalisation runs in
float32, the normalised row is rounded to the activation dtype before the weight multiplies it. One
program per row; rows must have a contiguous last dimension. Imports triton (only the Triton backend
imports this module).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(x_ptr, r_ptr, w_ptr, y_ptr, n_cols, stride_x, stride_r, stride_y, eps,
                     HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0)
    if HAS_RESIDUAL:
        x = x + tl.load(r_ptr + row * stride_r + cols, mask=ok, other=0.0)  # rounded to the dtype, as torch
        tl.store(r_ptr + row * stride_r + cols, x, mask=ok)
    h = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / n_cols + eps)
    normed = (h * rstd).to(x.dtype).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * stride_y + cols, (w * normed).to(y_ptr.dtype.element_ty), mask=ok)


def fits(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A 2-D input with a contiguous last dimension, of the weight's dtype."""
    return x.dim() == 2 and x.stride(-1) == 1 and weight.dtype == x.dtype and weight.is_contiguous()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None) -> torch.Tensor:
    """weight * norm(x) (x [T, H]); with `residual` ([T, H], same dtype) the norm of x + residual, the sum
    written into `residual` in place. Returns a new [T, H] tensor."""
    rows, cols = x.shape
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    if rows == 0:
        return y
    r = residual if residual is not None else x
    _rms_norm_kernel[(rows,)](x, r, weight, y, cols, x.stride(0), r.stride(0), y.stride(0), eps,
                              HAS_RESIDUAL=residual is not None, BLOCK=triton.next_power_of_2(cols))
    return y
