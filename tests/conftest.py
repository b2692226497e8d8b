"""Session fixtures shared by the whole suite.

`tiny_assets`: a `chameleon demo-assets --tiny` directory (model/ + adapters/<id>/), built once per
session in seconds. `demo_assets`: the real SmolLM2-135M-Instruct assets (100 adapters), built once per
machine into the chameleon cache and reused by later sessions (first build: about a minute or two).
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shard.demo_assets.cli import build_from_argv

    return build_from_argv(["--tiny", "--no-progress", str(tmp_path_factory.mktemp("tiny-assets"))])


@pytest.fixture(scope="session")
def demo_assets() -> Path:
    from shard.demo_assets.cli import build_from_argv, default_cache_dir

    return build_from_argv(["--no-progress", str(default_cache_dir() / "assets" / "smollm2-seed0")])
