"""Session fixtures shared by the whole suite.

`tiny_assets`: a `chameleon demo-assets --tiny` directory (model/ + adapters/<id>/), built once per
session in seconds. `demo_assets`: the real SmolLM2-135M-Instruct assets (100 adapters), built once per
machine into the chameleon cache and reused by later sessions (first build: about a minute or two).

TRITON_INTERPRET=1 is set here, before any test module is collected, when the caller did not set it and
no CUDA device is present. Triton reads it when a function is decorated, its own standard library's at
its first import, and many modules import triton indirectly (peft does); a conftest further down the
tree runs too late when an earlier directory's tests imported triton first. On a GPU machine it stays
unset, so the kernels compile for real there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shard.demo_assets.cli import build_from_argv

    return build_from_argv(["--tiny", "--no-progress", str(tmp_path_factory.mktemp("tiny-assets"))])


@pytest.fixture(scope="session")
def demo_assets() -> Path:
    from shard.demo_assets.cli import build_from_argv, default_cache_dir

    return build_from_argv(["--no-progress", str(default_cache_dir() / "assets" / "smollm2-seed0")])
