"""Fused rotary + KV write for the Triton backend: one kernel rotates q and k in place and writes the
rotated k and v into their KV slots, instead of torch's ten element-wise ops and two index writes.

The arithmetic is TorchBackend's (shard.model.rotary.apply_rotary, non-interleaved halves): out = x * cos +
rotate_half(x) * sin, each product and the sum rounded to the activation dtype as torch rounds them. One
program per (token, head) of q's Hq heads followed by k's Hk heads. Imports triton (only the Triton backend
imports this module).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rope_store_kernel(q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, slots_ptr, kc_ptr, vc_ptr,
                       stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ct, stride_st,
                       stride_kp, stride_kb, stride_kch, stride_vp, stride_vb, stride_vch,
                       HQ: tl.constexpr, HALF: tl.constexpr, HALF_P: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    d = tl.arange(0, HALF_P)
    ok = d < HALF
    c1 = tl.load(cos_ptr + t * stride_ct + d, mask=ok, other=0.0)
    c2 = tl.load(cos_ptr + t * stride_ct + HALF + d, mask=ok, other=0.0)
    s1 = tl.load(sin_ptr + t * stride_st + d, mask=ok, other=0.0)
    s2 = tl.load(sin_ptr + t * stride_st + HALF + d, mask=ok, other=0.0)
    if h < HQ:  # noqa: SIM108  (no ternary on runtime values in kernels)
        base = q_ptr + t * stride_qt + h * stride_qh
    else:
        base = k_ptr + t * stride_kt + (h - HQ) * stride_kh
    x1 = tl.load(base + d, mask=ok, other=0.0)
    x2 = tl.load(base + HALF + d, mask=ok, other=0.0)
    o1 = (x1 * c1).to(x1.dtype) + ((-x2) * s1).to(x1.dtype)  # rotate_half(x) = cat(-x2, x1)
    o2 = (x2 * c2).to(x1.dtype) + (x1 * s2).to(x1.dtype)
    tl.store(base + d, o1, mask=ok)
    tl.store(base + HALF + d, o2, mask=ok)
    if h >= HQ:
        kvh = h - HQ
        slot = tl.load(slots_ptr + t)
        page = slot // BLOCK_SIZE
        off = slot % BLOCK_SIZE
        kc = kc_ptr + page * stride_kp + off * stride_kb + kvh * stride_kch
        tl.store(kc + d, o1.to(kc_ptr.dtype.element_ty), mask=ok)
        tl.store(kc + HALF + d, o2.to(kc_ptr.dtype.element_ty), mask=ok)
        v_row = v_ptr + t * stride_vt + kvh * stride_vh
        vc = vc_ptr + page * stride_vp + off * stride_vb + kvh * stride_vch
        tl.store(vc + d, tl.load(v_row + d, mask=ok, other=0.0).to(vc_ptr.dtype.element_ty), mask=ok)
        tl.store(vc + HALF + d, tl.load(v_row + HALF + d, mask=ok, other=0.0).to(vc_ptr.dtype.element_ty),
                 mask=ok)


def fits(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
         k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    """Unit stride along the head dimension everywhere, an even head dim, one dtype, cos/sin [T, 1, D]."""
    tensors = (q, k, v, cos, sin, k_cache, v_cache)
    return all(t.stride(-1) == 1 for t in tensors) and q.shape[-1] % 2 == 0 and \
        len({t.dtype for t in tensors}) == 1 and cos.dim() == sin.dim() == 3 and cos.shape[1] == 1


def rope_store(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               slots: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    """Rotate q [T, Hq, D] and k [T, Hk, D] in place; rotated k and v [T, Hk, D] into the caches
    [pages, block_size, Hk, D] at slots [T] (page * block_size + offset)."""
    t, hq, dim = q.shape
    if t == 0:
        return
    hk, half = k.shape[1], dim // 2
    _rope_store_kernel[(t, hq + hk)](
        q, k, v, cos, sin, slots, k_cache, v_cache, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        v.stride(0), v.stride(1), cos.stride(0), sin.stride(0), k_cache.stride(0), k_cache.stride(1),
        k_cache.stride(2), v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        HQ=hq, HALF=half, HALF_P=triton.next_power_of_2(half), BLOCK_SIZE=k_cache.shape[1])
