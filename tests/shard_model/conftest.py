"""Fixtures: a tiny model with 8 PEFT adapters (ranks 8..128), built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.shard_model.tiny import Reference, build


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def reference(tiny_root: Path) -> Reference:
    return Reference(tiny_root)
