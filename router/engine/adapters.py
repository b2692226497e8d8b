"""AdapterRegistry: which adapters exist and how many pool pages each one takes.

Sources: PEFT folders under `--adapter-dir` (by plain folder name; a name not seen at start-up is
looked up on first use) and the adapters the shard itself knows (its ListAdapters). Sizes come from
`adapter_config.json` (r, lora_alpha, target_modules) and the safetensors header (plain JSON: the
tensor names give the target modules when the config names them by pattern, the tensor dtypes the
storage dtype through `chameleon.memory.adapter_storage_dtype` and the shards' `--adapter-dtype`
policy), with the page arithmetic of `chameleon.memory` so router and shard agree. No torch, no
tensor is read.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from chameleon.memory import (
    DTYPE_BYTES,
    LORA_TARGETS,
    ModelShape,
    adapter_bytes,
    adapter_pages,
    adapter_storage_dtype,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_WEIGHTS = "adapter_model.safetensors"


class AdapterNotFound(KeyError):
    """The adapter id is neither under --adapter-dir nor known to the shard."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "adapter not found"


@dataclass(frozen=True, slots=True)
class AdapterMeta:
    """An adapter's size facts. `nbytes` is the whole adapter in its storage dtype `dtype` (all ranks);
    `pages` the pool pages it occupies on every rank (the largest rank slice, in pages)."""

    adapter_id: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    nbytes: int
    pages: int
    path: Path | None
    dtype: str = ""  # storage dtype ("float32", "bfloat16", "float16"); "" = the model dtype


def valid_adapter_name(name: str) -> bool:
    """A plain folder name: letters, digits, '.', '_' and '-', not starting with a dot."""
    return bool(_NAME.match(name)) and ".." not in name


def safetensors_names(path: Path) -> list[str]:
    """Tensor names from a safetensors file's JSON header (8-byte little-endian length + JSON)."""
    return list(safetensors_dtypes(path))


def safetensors_dtypes(path: Path) -> dict[str, str]:
    """Tensor name -> dtype code ("BF16", "F32", ...) from a safetensors file's JSON header."""
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > 100 << 20:
            raise ValueError(f"{path}: safetensors header of {n} bytes is implausible")
        raw = f.read(n)
    if len(raw) != n:
        raise ValueError(f"{path}: not a safetensors file (header of {n} bytes announced, {len(raw)} there)")
    try:
        header = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path}: not a safetensors file (its header is not JSON: {exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: safetensors header is not a JSON object")
    return {k: str(v.get("dtype", "")) if isinstance(v, dict) else "" for k, v in header.items()
            if k != "__metadata__"}


def _targets(config: dict, folder: Path) -> tuple[str, ...]:
    raw = config.get("target_modules")
    if isinstance(raw, list) and raw:
        return tuple(m for m in LORA_TARGETS if m in {str(x).split(".")[-1] for x in raw})
    weights = folder / _WEIGHTS
    if weights.is_file():
        names = safetensors_names(weights)
        return tuple(m for m in LORA_TARGETS if any(f".{m}.lora_" in n for n in names))
    if raw == "all-linear":
        return LORA_TARGETS
    raise ValueError(f"{folder}: cannot tell the target modules (no list in adapter_config.json, "
                     f"no {_WEIGHTS})")


def _file_dtypes(folder: Path) -> tuple[str, ...]:
    """Dtype codes of the LoRA tensors in the folder's safetensors file (none when it is missing)."""
    weights = folder / _WEIGHTS
    if not weights.is_file():
        return ()
    return tuple(sorted({d for n, d in safetensors_dtypes(weights).items() if ".lora_" in n}))


class AdapterRegistry:
    """Adapter id -> AdapterMeta. `shape`, `dtype_bytes`, `block_size` and `world` must be the
    shards' (Info/Warmup), so page counts equal what the shards allocate; so must `model_dtype` (Info
    dtype) and `adapter_policy` (ShardInfo.adapter_dtype), which fix each adapter's storage dtype.
    Without `model_dtype` every adapter is sized in `dtype_bytes` (the shards' behaviour before
    adapter storage dtypes)."""

    def __init__(self, shape: ModelShape, dtype_bytes: int, block_size: int, world: int,
                 adapter_dir: Path | None = None, model_dtype: str | None = None,
                 adapter_policy: str = "model") -> None:
        self._shape, self._dtype_bytes, self._block, self._world = shape, dtype_bytes, block_size, world
        self._model_dtype, self._policy = model_dtype, adapter_policy or "model"
        if model_dtype is not None:
            adapter_storage_dtype(model_dtype, (), self._policy)  # validates both now
        self._dir = adapter_dir
        self._known: dict[str, AdapterMeta] = {}

    def scan(self) -> list[str]:
        """Register every adapter folder under --adapter-dir; returns the ids found."""
        if self._dir is None or not self._dir.is_dir():
            return []
        found = []
        for sub in sorted(self._dir.iterdir()):
            if (sub / "adapter_config.json").is_file() and valid_adapter_name(sub.name):
                self._known[sub.name] = self.read_folder(sub.name, sub)
                found.append(sub.name)
        return found

    def add_from_shard(self, adapter_id: str, rank: int, alpha: float, targets: tuple[str, ...],
                       dtype: str = "") -> None:
        """Register an adapter the shard knows (its --lora-adapters) unless the folder scan has it;
        `dtype`: the storage dtype the shard reported (its AdapterInfo.dtype; "" = the model dtype)."""
        if adapter_id not in self._known:
            self._known[adapter_id] = self._meta(adapter_id, rank, alpha, targets, None, dtype)

    def read_folder(self, adapter_id: str, folder: Path) -> AdapterMeta:
        cfg_path = folder / "adapter_config.json"
        try:
            config = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"adapter {adapter_id!r}: unreadable {cfg_path}: {exc}") from exc
        rank = config.get("r")
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"adapter {adapter_id!r}: adapter_config.json has no valid rank 'r'")
        targets = _targets(config, folder)
        if not targets:
            raise ValueError(f"adapter {adapter_id!r}: none of its target modules is supported "
                             f"({', '.join(LORA_TARGETS)})")
        alpha = float(config.get("lora_alpha", rank))
        dtype = ""
        if self._model_dtype is not None:
            dtype = adapter_storage_dtype(self._model_dtype, _file_dtypes(folder), self._policy)
        return self._meta(adapter_id, rank, alpha, targets, folder, dtype)

    def _meta(self, adapter_id: str, rank: int, alpha: float, targets: tuple[str, ...],
              path: Path | None, dtype: str = "") -> AdapterMeta:
        stored = DTYPE_BYTES.get(dtype, self._dtype_bytes)
        nbytes = adapter_bytes(self._shape, rank, targets, stored)
        pages = adapter_pages(self._shape, rank, targets, self._dtype_bytes, self._block, self._world,
                              adapter_dtype_bytes=stored)
        return AdapterMeta(adapter_id, rank, alpha, targets, nbytes, pages, path, dtype)

    def get(self, adapter_id: str) -> AdapterMeta:
        """The adapter's facts; looks it up under --adapter-dir on first use. Raises AdapterNotFound."""
        meta = self._known.get(adapter_id)
        if meta is not None:
            return meta
        if self._dir is not None and valid_adapter_name(adapter_id):
            folder = self._dir / adapter_id
            if (folder / "adapter_config.json").is_file():
                meta = self._known[adapter_id] = self.read_folder(adapter_id, folder)
                return meta
        where = f" under {self._dir}" if self._dir is not None else ""
        raise AdapterNotFound(f"unknown adapter {adapter_id!r}: no such adapter{where} or on the shard")

    def known(self, adapter_id: str) -> bool:
        """True when the adapter exists: registered, or a folder under --adapter-dir with an
        adapter_config.json, even one whose files cannot be read (corrupt, half-written). Such an
        adapter is not *unknown*: using it fails with the reason (get() raises ValueError), the same
        as when the shard refuses its files, whichever of the two happens to read them first."""
        try:
            self.get(adapter_id)
        except AdapterNotFound:
            return False
        except ValueError:
            return True
        return True

    def forget(self, adapter_id: str) -> None:
        self._known.pop(adapter_id, None)

    def forget_folder(self, adapter_id: str) -> bool:
        """Forget an adapter found under --adapter-dir (looked up again on next use); adapters the
        shard named itself are kept. True when it was forgotten."""
        meta = self._known.get(adapter_id)
        if meta is None or meta.path is None:
            return False
        del self._known[adapter_id]
        return True

    def all(self) -> list[AdapterMeta]:
        return sorted(self._known.values(), key=lambda m: m.adapter_id)
