"""The kernels compile for real GPUs (PTX + ptxas, no GPU needed): catches errors the interpreter lets
through (tl.dot shape limits, types). Own process: this one runs the interpreter."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_kernels_compile_for_h100_in_bf16() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "shard.kernels.compile_check", "--arch", "90", "--dtype", "bf16"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.count(": ok in") == 5, out.stdout
