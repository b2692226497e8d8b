"""Triton kernel tests: CPU tensors through Triton's interpreter, plus `gpu`-marked CUDA variants.

Triton reads TRITON_INTERPRET when a kernel is decorated (@triton.jit, at import of shard.kernels.*),
so it is set here, at conftest import time, before any test module imports the kernels. It is set only
when the caller did not set it and no CUDA device is present: on a GPU machine the kernels compile for
real (run `pytest -m gpu tests/shard_kernels` there; the CPU variants need the interpreter and fail
clearly without it). Setting it process-wide on a GPU machine would also put every other Triton
kernel of the run in the interpreter.

triton must be importable (CI installs it through the `dev` extra on Linux x86_64): a missing triton
fails the tests at import, it does not skip them.
"""

from __future__ import annotations

import os

import pytest
import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import triton  # noqa: F401  (fails the directory clearly when triton is missing)


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@pytest.fixture(params=[
    pytest.param(("cpu", torch.float32), id="cpu-fp32"),
    pytest.param(("cpu", torch.float16), id="cpu-fp16"),
    pytest.param(("cuda", torch.bfloat16), id="cuda-bf16", marks=pytest.mark.gpu),
    pytest.param(("cuda", torch.float16), id="cuda-fp16", marks=pytest.mark.gpu),
])
def target(request: pytest.FixtureRequest) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) of one test variant. CPU variants need the interpreter, CUDA ones a GPU and
    compiled kernels; a mismatch fails (never skips)."""
    device, dtype = request.param
    if device == "cpu":
        assert interpreted(), "CPU kernel tests need TRITON_INTERPRET=1 (set by this conftest without CUDA)"
    else:
        assert torch.cuda.is_available(), "gpu-marked test without a CUDA device (deselect with -m 'not gpu')"
        assert not interpreted(), "gpu-marked tests compile the kernels: unset TRITON_INTERPRET"
    return torch.device(device), dtype


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    return {torch.float32: {"atol": 2e-4, "rtol": 2e-4}, torch.float16: {"atol": 1e-2, "rtol": 1e-2},
            torch.bfloat16: {"atol": 4e-2, "rtol": 4e-2}}[dtype]
