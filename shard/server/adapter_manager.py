"""Where adapters come from and which pool pages they take, as the shard sees it.

Two modes share one pool. Router-managed (Chameleon router): `AdapterService.LoadAdapter` names the
pages; the shard uses exactly those. Plain TGI (a router that only sends `adapter_id`): the shard loads
the adapter itself into free pages of its own region `[self_lo, num_pages)`, which Warmup kept out of
`max_supported_total_tokens`, evicting (least recently used first) adapters it loaded itself that no
live batch uses.

Adapter ids resolve to `--lora-adapters` names first, then to `<adapter-dir>/<id>/`; ids must be
plain names (chameleon.core.adapter_files.check_adapter_id, the router's rule too).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path

from chameleon.core import adapter_files
from chameleon.core.adapter_files import CONFIG, AdapterIdError
from shard.lora.errors import AdapterError


def parse_lora_adapters(spec: str) -> dict[str, Path]:
    """TGI's LORA_ADAPTERS: `name=path,name2=path2` (a bare `path` is named after its last folder)."""
    out: dict[str, Path] = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).name, item
        name, path = name.strip(), path.strip()
        if not name or not path:
            raise ValueError(f"--lora-adapters entry {item!r} is not name=path")
        check_adapter_id(name)
        if name in out:
            raise ValueError(f"--lora-adapters names {name!r} twice")
        out[name] = Path(path)
    return out


def check_adapter_id(adapter_id: str) -> str:
    """chameleon.core.adapter_files.check_adapter_id (the router's rule too), failing with AdapterError."""
    try:
        return adapter_files.check_adapter_id(adapter_id)
    except AdapterIdError as exc:
        raise AdapterError(str(exc)) from None


class AdapterManager:
    """Resolves adapter ids to folders and keeps the shard's own page region (see module doc)."""

    def __init__(self, store: object, named: Mapping[str, Path], adapter_dir: Path | None) -> None:
        self.store = store
        self.named = dict(named)
        self.adapter_dir = adapter_dir
        self.num_pages = 0
        self.self_lo = 0
        self._self_loaded: OrderedDict[str, None] = OrderedDict()  # LRU order, oldest first

    def resolve(self, adapter_id: str) -> Path:
        if adapter_id in self.named:
            return self.named[adapter_id]
        check_adapter_id(adapter_id)
        if self.adapter_dir is not None and (self.adapter_dir / adapter_id).is_dir():
            return self.adapter_dir / adapter_id
        where = f" or under {self.adapter_dir}" if self.adapter_dir else ""
        raise AdapterError(f"unknown adapter {adapter_id!r}: not in --lora-adapters{where}")

    def available(self) -> list[str]:
        ids = set(self.named)
        if self.adapter_dir is not None and self.adapter_dir.is_dir():
            ids |= {p.name for p in self.adapter_dir.iterdir()
                    if p.is_dir() and (p / CONFIG).is_file()}
        return sorted(ids)

    def set_pool(self, num_pages: int, self_lo: int) -> None:
        """After (re)allocating the pool: the store dropped everything; pages >= self_lo are ours."""
        self.num_pages, self.self_lo = num_pages, self_lo
        self._self_loaded.clear()

    def used_pages(self) -> set[int]:
        return {p for a in self.store.resident() for p in a.pages}

    def load_assigned(self, adapter_id: str, pages: list[int], busy_pages: set[int],
                      busy_adapters: set[str]) -> object:
        """Router-managed load into `pages`; adapters we loaded ourselves that sit there move out.
        Pages holding KV of a cached batch are refused."""
        if self.store.has(adapter_id):
            return self.store.info(adapter_id)
        bad = [p for p in pages if not 0 < p < self.num_pages]
        if bad:
            raise ValueError(f"pages {bad[:4]} are outside the pool (1..{self.num_pages - 1})")
        wanted = set(pages)
        if wanted & busy_pages:
            raise ValueError(f"pages {sorted(wanted & busy_pages)[:4]} hold KV blocks of a running batch")
        for info in self.store.resident():
            if wanted & set(info.pages):
                if info.adapter_id not in self._self_loaded or info.adapter_id in busy_adapters:
                    raise ValueError(f"pages {sorted(wanted & set(info.pages))[:4]} hold adapter "
                                     f"{info.adapter_id!r}; offload it first")
                self.offload(info.adapter_id)
        return self.store.load(adapter_id, self.resolve(adapter_id), list(pages))

    def offload(self, adapter_id: str) -> tuple[int, ...]:
        self._self_loaded.pop(adapter_id, None)
        return self.store.offload(adapter_id)

    def ensure_resident(self, adapter_ids: Iterable[str], busy_pages: set[int],
                        busy_adapters: set[str]) -> None:
        """Plain-TGI mode: load every id that is not resident into pages of the shard's own region."""
        for aid in dict.fromkeys(adapter_ids):
            if self.store.has(aid):
                if aid in self._self_loaded:
                    self._self_loaded.move_to_end(aid)
                continue
            path = self.resolve(aid)
            need = self.store.pages_needed(path)
            pages = self._free_self_pages(need, busy_pages, busy_adapters | set(adapter_ids))
            self.store.load(aid, path, pages)
            self._self_loaded[aid] = None

    def _free_self_pages(self, need: int, busy_pages: set[int], keep: set[str]) -> list[int]:
        while True:
            taken = self.used_pages() | busy_pages
            free = [p for p in range(max(self.self_lo, 1), self.num_pages) if p not in taken]
            if len(free) >= need:
                return free[:need]
            victim = next((a for a in self._self_loaded if a not in keep), None)
            if victim is None:
                raise AdapterError(f"no room for an adapter of {need} pages in the shard's adapter region "
                                   f"({self.num_pages - self.self_lo} pages; raise --adapter-pages)")
            self.offload(victim)
