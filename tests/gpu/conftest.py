"""GPU tests (`pytest -m gpu tests/gpu tests/shard_kernels`; scripts/gpu_check.sh runs them).

Every module carries `pytestmark = pytest.mark.gpu`: `make test` (-m "not gpu") deselects them on a
machine without CUDA; selected without a CUDA device, or with TRITON_INTERPRET=1 (kernels must compile),
they fail, never skip. The tiny model here is tests/shard_model/tiny.py's (8 adapters, ranks 8..128).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.shard_model.tiny import Reference, build


@pytest.fixture(autouse=True)
def _cuda_device() -> None:
    assert torch.cuda.is_available(), "gpu-marked test without a CUDA device (deselect with -m 'not gpu')"
    assert os.environ.get("TRITON_INTERPRET", "0") != "1", "gpu tests compile the kernels: unset it"


@pytest.fixture(scope="session")
def gpu_tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("gpu-tiny-llama"))


@pytest.fixture(scope="session")
def gpu_reference(gpu_tiny_root: Path) -> Reference:
    """transformers + PEFT, float32 on CPU: the reference every CUDA result is held to."""
    return Reference(gpu_tiny_root)
