"""Fixtures: the tiny Llama of tests/shard_model with its 8 PEFT adapters (ranks 8..128), built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.shard_model.tiny import build


@pytest.fixture(scope="session")
def lora_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("device-tiny-llama"))
