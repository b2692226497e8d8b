"""Fixtures: a tiny model with 8 PEFT adapters (ranks 8..128), built once per session.

Without CUDA, TRITON_INTERPRET=1 is set first (as tests/shard_kernels/conftest.py does): Triton reads it
when a function is decorated, its own standard library's at its first import, and peft (imported by the
tiny-model helpers below) imports triton; test_triton_backend.py runs the Triton backend on CPU tensors.
"""

from __future__ import annotations

import os

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from pathlib import Path

import pytest

from tests.shard_model.tiny import Reference, build


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def reference(tiny_root: Path) -> Reference:
    return Reference(tiny_root)
