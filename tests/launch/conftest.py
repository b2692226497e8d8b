from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short folder for unix sockets (pytest's tmp_path can exceed the 107-byte socket path limit)."""
    path = Path(tempfile.mkdtemp(prefix="chl-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
