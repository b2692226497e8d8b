"""One tiny shard for the whole package (see system.py); each module starts its own router on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.system import Shard, shard_system


@pytest.fixture(scope="package")
def shard(tiny_assets: Path) -> Iterator[Shard]:
    with shard_system(tiny_assets) as s:
        yield s
