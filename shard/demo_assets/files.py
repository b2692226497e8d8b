"""Deterministic file writing and hashing for the demo assets (no timestamps, sorted keys)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

MANIFEST = "manifest.json"
LOCK = ".build.lock"  # inside an assets directory; never hashed, never part of the output


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Pretty JSON with sorted keys and a trailing newline, written atomically."""
    _atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """safetensors with fixed metadata; contiguous, detached copies so shared storage never leaks in."""
    clean = {name: t.detach().contiguous() for name, t in sorted(tensors.items())}
    tmp = path.with_name(path.name + ".tmp")
    save_file(clean, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)


def copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tree_hashes(root: Path, *, skip: frozenset[str] = frozenset({MANIFEST})) -> dict[str, str]:
    """sha256 of every regular file under root (but the build lock), keyed by POSIX relative path."""
    return {p.relative_to(root).as_posix(): sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip | {LOCK}}


def stable_seed(*parts: object) -> int:
    """A 63-bit seed derived from the parts (stable across processes, unlike hash())."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1


def _atomic_write(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (flock) held for the duration of the block: concurrent builds of the
    same directory (parallel test sessions, two launchers) wait instead of interleaving writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


_ADAPTER_DIR = re.compile(r"^r\d+-\d+$")  # the names the builders generate: r{rank}-{index}


def remove_stale_adapters(adapters: Path, keep: set[str]) -> None:
    """Drop adapter folders of an earlier build with other parameters (only names the builders make)."""
    if adapters.is_dir():
        for child in adapters.iterdir():
            if child.is_dir() and _ADAPTER_DIR.match(child.name) and child.name not in keep:
                shutil.rmtree(child)
