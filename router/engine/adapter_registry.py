"""AdapterRegistry: which adapters exist and how many pool pages each one takes.

Sources: PEFT folders under `--adapter-dir` (by plain folder name; a name not seen at start-up is
looked up on first use) and the adapters the shard itself knows (its ListAdapters). A folder is read
and sized by chameleon.core.adapter_files (its header: rank, alpha, targets, LoRA tensor dtypes; its
footprint under the shards' `--adapter-dtype` policy), the very code the shard sizes it with, so router
and shard agree on every page count and refuse the same folders. No torch, no tensor is read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from chameleon.core.adapter_files import (
    CONFIG,
    AdapterFolderError,
    adapter_footprint,
    read_adapter_header,
    valid_adapter_id,
)
from chameleon.core.memory import DTYPE_BYTES, ModelShape, adapter_bytes, adapter_pages, adapter_storage_dtype

log = logging.getLogger("chameleon.router.adapters")


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
            if (sub / CONFIG).is_file() and valid_adapter_id(sub.name):
                try:
                    self._known[sub.name] = self.read_folder(sub.name, sub)
                except AdapterFolderError as exc:  # known, unusable: get() re-reads it, fails with the reason
                    log.warning("adapter folder cannot be used: %s", exc, extra={"adapter_id": sub.name})
                found.append(sub.name)
        return found

    def add_from_shard(self, adapter_id: str, rank: int, alpha: float, targets: tuple[str, ...],
                       dtype: str = "") -> None:
        """Register an adapter the shard knows (its --lora-adapters) unless the folder scan has it;
        `dtype`: the storage dtype the shard reported (its AdapterInfo.dtype; "" = the model dtype)."""
        if adapter_id not in self._known:
            self._known[adapter_id] = self._meta(adapter_id, rank, alpha, targets, None, dtype)

    def read_folder(self, adapter_id: str, folder: Path) -> AdapterMeta:
        """Size the folder's adapter (chameleon.core.adapter_files). Raises AdapterFolderError (a
        ValueError) for a folder the shard would refuse too."""
        try:
            header = read_adapter_header(folder, self._shape)
        except AdapterFolderError as exc:
            raise AdapterFolderError(f"adapter {adapter_id!r}: {exc}") from None
        dtype = ""
        if self._model_dtype is not None:
            dtype = header.storage_dtype(self._model_dtype, self._policy)
        return self._meta(adapter_id, header.rank, header.alpha, header.targets, folder, dtype)

    def _meta(self, adapter_id: str, rank: int, alpha: float, targets: tuple[str, ...],
              path: Path | None, dtype: str = "") -> AdapterMeta:
        if dtype in DTYPE_BYTES:
            size = adapter_footprint(self._shape, rank, targets, dtype, self._dtype_bytes, self._block,
                                     self._world)
            nbytes, pages = size.nbytes, size.pages
        else:  # no storage dtype known (a shard before adapter storage dtypes): the pool's element size
            nbytes = adapter_bytes(self._shape, rank, targets, self._dtype_bytes)
            pages = adapter_pages(self._shape, rank, targets, self._dtype_bytes, self._block, self._world)
        return AdapterMeta(adapter_id, rank, alpha, targets, nbytes, pages, path, dtype)

    def get(self, adapter_id: str) -> AdapterMeta:
        """The adapter's facts; looks it up under --adapter-dir on first use. Raises AdapterNotFound."""
        meta = self._known.get(adapter_id)
        if meta is not None:
            return meta
        if self._dir is not None and valid_adapter_id(adapter_id):
            folder = self._dir / adapter_id
            if (folder / CONFIG).is_file():
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
