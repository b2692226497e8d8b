"""Kernel micro-benchmark and check on a GPU: `python -m shard.kernels.bench [--json PATH]`.

Times each Triton kernel on Llama-7B-shaped inputs (bf16), reports the bytes it must read per call and
the bandwidth that makes, and checks the result against the torch reference on the same inputs:
- decode: paged decode attention, batch 32, context 512, 32 heads of 128, block_size 16;
- prefill: 4 rows of 512 new tokens each, contiguous K/V (causal);
- sgmv: 32 rows, one adapter each (ranks 8..128 cycling), 4096 -> 4096, shrink + expand.
`--small` shrinks every shape (a smoke run; on CPU it goes through TRITON_INTERPRET=1, set it yourself).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from shard.kernels import reference
from shard.kernels.attention import paged_decode_attention, prefill_attention
from shard.kernels.lora import lora_table, segments_from_row_adapters, sgmv_lora


@dataclass(frozen=True, slots=True)
class Result:
    kernel: str
    shape: str
    ms: float
    bytes_read: int
    gb_per_s: float
    max_abs_err: float


def _time(fn: Callable[[], object], device: torch.device, iters: int) -> float:
    """Mean milliseconds per call after one warm-up call (CUDA events on GPU)."""
    fn()
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - start) * 1e3 / iters
    torch.cuda.synchronize()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return begin.elapsed_time(end) / iters


def _result(kernel: str, shape: str, ms: float, nbytes: int, got: torch.Tensor, want: torch.Tensor) -> Result:
    err = float((got.float() - want.float()).abs().max())
    return Result(kernel, shape, round(ms, 4), nbytes, round(nbytes / ms / 1e6, 1), err)


def bench_decode(device: torch.device, dtype: torch.dtype, small: bool, iters: int) -> Result:
    s, h, d, ctx, bs = (4, 2, 32, 40, 4) if small else (32, 32, 128, 512, 16)
    per_seq = -(-ctx // bs)
    pages = s * per_seq + 1
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(pages, bs, h, d, generator=gen).to(device, dtype)
    v = torch.randn(pages, bs, h, d, generator=gen).to(device, dtype)
    tables = (torch.randperm(pages - 1, generator=gen)[:s * per_seq] + 1).view(s, per_seq).to(device)
    lens = torch.full((s,), ctx, dtype=torch.int64, device=device)
    q = torch.randn(s, h, d, generator=gen).to(device, dtype)
    out = torch.empty_like(q)
    ms = _time(lambda: paged_decode_attention(q, k, v, tables, lens, out=out), device, iters)
    want = reference.paged_decode_attention(q, k, v, tables, lens)
    return _result("paged_decode_attention", f"S={s} H={h} D={d} ctx={ctx} bs={bs}", ms,
                   2 * s * ctx * h * d * k.element_size(), out, want)


def bench_prefill(device: torch.device, dtype: torch.dtype, small: bool, iters: int) -> Result:
    b, n, h, d = (2, 20, 2, 32) if small else (4, 512, 32, 128)
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(b * n, h, d, generator=gen).to(device, dtype) for _ in range(3))
    cu = torch.arange(0, b * n + 1, n, dtype=torch.int32, device=device)
    out = torch.empty_like(q)
    ms = _time(lambda: prefill_attention(q, k, v, cu, max_query_len=n, out=out), device, iters)
    want = reference.prefill_attention(q, k, v, cu)
    nbytes = 3 * b * n * h * d * q.element_size()
    return _result("prefill_attention", f"B={b} len={n} H={h} D={d}", ms, nbytes, out, want)


def bench_sgmv(device: torch.device, dtype: torch.dtype, small: bool, iters: int) -> Result:
    t, hidden, ranks = (4, 64, (8, 16)) if small else (32, 4096, (8, 16, 32, 64, 128))
    gen = torch.Generator().manual_seed(2)
    pairs = [(torch.randn(r, hidden, generator=gen).div(math.sqrt(hidden)).to(device, dtype),
              torch.randn(hidden, r, generator=gen).div(math.sqrt(r)).to(device, dtype))
             for r in (ranks[i % len(ranks)] for i in range(t))]
    scales = [1.0] * t
    table = lora_table(pairs, scales)
    row_adapter = torch.arange(t, device=device)
    segs = segments_from_row_adapters(row_adapter)
    x = torch.randn(t, hidden, generator=gen).to(device, dtype)
    base = torch.zeros(t, hidden, dtype=dtype, device=device)
    out = base.clone()
    ms = _time(lambda: sgmv_lora(x, table, segs, out, hidden), device, iters)
    got = sgmv_lora(x, table, segs, base.clone(), hidden)
    want = reference.sgmv_lora(x, pairs, scales, row_adapter, base)
    nbytes = sum(a.numel() + b.numel() for a, b in pairs) * x.element_size()
    return _result("sgmv_lora", f"T={t} {hidden}->{hidden} ranks={','.join(map(str, ranks))}", ms, nbytes,
                   got, want)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shard.kernels.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    p.add_argument("--small", action="store_true", help="tiny shapes (smoke run)")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    results = [fn(device, dtype, args.small, args.iters) for fn in (bench_decode, bench_prefill, bench_sgmv)]
    for r in results:
        print(f"{r.kernel:24s} {r.shape:40s} {r.ms:9.3f} ms {r.gb_per_s:8.1f} GB/s  "
              f"max|err| {r.max_abs_err:.3g}")
    if args.json:
        args.json.write_text(json.dumps({"device": str(device) if device.type != "cuda"
                                         else torch.cuda.get_device_name(device), "dtype": args.dtype,
                                         "results": [asdict(r) for r in results]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
