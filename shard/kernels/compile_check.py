"""Compile every kernel ahead of time for a CUDA target, without a GPU: `python -m
shard.kernels.compile_check [--arch 90] [--dtype bf16]`. Triton lowers each kernel to PTX and runs the
ptxas it ships, so GPU-only compile errors (dot shapes, types, shared memory) show on a CPU machine.

Needs TRITON_INTERPRET unset (the interpreter does not compile): run it in its own process. Uses
triton.compiler.ASTSource with name-keyed signatures (Triton >= 3.2).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable


def _specs(dt: str) -> list[tuple[str, dict[str, str], dict[str, object]]]:
    """(kernel name, pointer/scalar types, constexprs): realistic shapes (Llama-7B heads, GQA 4)."""
    p = f"*{dt}"
    prec = "ieee" if dt == "fp32" else "tf32"
    tile = 32 if dt == "fp32" else 64  # as attention.prefill_attention picks on GPUs
    attn = {"q_ptr": p, "k_ptr": p, "v_ptr": p, "o_ptr": p, "sm_scale": "fp32"}
    seg = {"rows_ptr": "*i64", "start_ptr": "*i32", "len_ptr": "*i32", "adapter_ptr": "*i32",
           "rank_ptr": "*i32"}
    return [
        ("attention._decode_kernel", {**attn, "tables_ptr": "*i64", "lens_ptr": "*i64"},
         {"GROUP": 4, "HEAD_DIM": 128, "BLOCK_SIZE": 16, "GROUP_P": 16, "D_P": 128, "BLOCK_N": 64,
          "PRECISION": prec}),
        *[("attention._prefill_kernel", {**attn, "cu_ptr": "*i32", "ctx_ptr": "*i32", "tables_ptr": "*i64"},
           {"GROUP": 4, "HEAD_DIM": 128, "BLOCK_SIZE": 16, "PAGED": paged, "D_P": 128, "BLOCK_M": tile,
            "BLOCK_N": tile, "PRECISION": prec}) for paged in (True, False)],
        ("lora._shrink_kernel", {**seg, "x_ptr": p, "w_ptr": p, "y_ptr": "*fp32", "a_off_ptr": "*i64",
                                 "scale_ptr": "*fp32"},
         {"BLOCK_M": 16, "BLOCK_R": 16, "BLOCK_K": 64, "PRECISION": prec}),
        ("lora._expand_kernel", {**seg, "y_ptr": "*fp32", "w_ptr": p, "o_ptr": p, "b_off_ptr": "*i64"},
         {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_R": 16, "PRECISION": prec}),
    ]


def compile_all(arch: int, dtype: str, say: Callable[[str], None] = print) -> int:
    """Compile every kernel for sm_{arch}; returns how many compiled (raises on the first failure)."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("TRITON_INTERPRET=1: the interpreter compiles nothing; unset it")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from shard.kernels import attention, lora

    modules = {"attention": attention, "lora": lora}
    target = GPUTarget("cuda", arch, 32)
    for name, types, consts in _specs(dtype):
        mod, fn_name = name.split(".")
        fn = getattr(modules[mod], fn_name)
        signature = {a: types.get(a, "constexpr" if a in consts else "i32") for a in fn.arg_names}
        start = time.monotonic()
        kernel = triton.compile(ASTSource(fn, signature, consts), target=target)
        say(f"{name} sm_{arch} {dtype}: ok in {time.monotonic() - start:.1f}s, "
            f"shared memory {kernel.metadata.shared} B")
    return len(_specs(dtype))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shard.kernels.compile_check", description=__doc__)
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (80: A100, 90: H100)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    args = p.parse_args(argv)
    compile_all(args.arch, args.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
