"""The Triton backend's own kernels (fused RMSNorm, fused rotary + KV write) compile for an H100 (PTX and
ptxas, no GPU needed), in bf16 and fp32: catches what the interpreter lets through. Own process: the
test session runs the interpreter (TRITON_INTERPRET=1), which compiles nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from shard.model import triton_norm, triton_rope

for dt in ("bf16", "fp32"):
    p = "*" + dt
    norm = {"x_ptr": p, "r_ptr": p, "w_ptr": p, "y_ptr": p, "eps": "fp32"}
    rope = {n: p for n in ("q_ptr", "k_ptr", "v_ptr", "cos_ptr", "sin_ptr", "kc_ptr", "vc_ptr")}
    specs = [(triton_norm._rms_norm_kernel, norm, {"HAS_RESIDUAL": r, "BLOCK": 4096}) for r in (True, False)]
    specs.append((triton_rope._rope_store_kernel, {**rope, "slots_ptr": "*i64"},
                  {"HQ": 32, "HALF": 64, "HALF_P": 64, "BLOCK_SIZE": 16}))
    for fn, types, consts in specs:
        sig = {a: types.get(a, "constexpr" if a in consts else "i32") for a in fn.arg_names}
        triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32))
        print("compiled", fn.__name__, dt)
"""


@pytest.mark.slow
def test_backend_kernels_compile_for_h100() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.count("compiled") == 6, out.stdout
