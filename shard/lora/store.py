"""AdapterStore: resident adapters, converted once into the pool layout, in router-assigned pages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class AdapterInfo:
    """A resident adapter as the server reports it."""

    adapter_id: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    nbytes: int            # true size of this rank's slice (chameleon.memory.adapter_bytes)
    pages: tuple[int, ...]  # pool pages it occupies on this rank (empty when loaded outside the pool)


class AdapterStore:
    """Contract (skeleton; filled in next):

    load(adapter_id, path, pages) -> AdapterInfo
        Reads a PEFT folder (adapter_config.json + adapter_model.safetensors ONLY; a pickle .bin is
        refused), validates it against the base model (hidden size, target modules, rank 1..), converts
        it once into this rank's TP slice and writes it into `pages` of the pool (len(pages) must be
        chameleon.memory.adapter_pages(...)). pages=None keeps it outside the pool (tests/tools).
        Loading an id that is already resident returns its info unchanged. Raises AdapterError.
    offload(adapter_id) -> tuple[int, ...]   frees it; returns the pages it held. AdapterError if absent.
    resident() -> list[AdapterInfo];  has(adapter_id) -> bool;  info(adapter_id) -> AdapterInfo
    pages_needed(path) -> int                 pages this adapter would take (reads only its config).
    """

    def load(self, adapter_id: str, path: str | Path, pages: list[int] | None = None) -> AdapterInfo:
        raise NotImplementedError

    def offload(self, adapter_id: str) -> tuple[int, ...]:
        raise NotImplementedError

    def resident(self) -> list[AdapterInfo]:
        raise NotImplementedError

    def has(self, adapter_id: str) -> bool:
        raise NotImplementedError
