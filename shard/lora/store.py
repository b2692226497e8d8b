"""AdapterStore: resident adapters, converted once into this rank's TP slice and the pool layout.

Conversion (chameleon.core.memory is the source of the split rules): for column-parallel modules A keeps
rows split_range(r) ([r_local, in]) and B the rows of this rank's output slice ([out_local, r]); for
row-parallel modules A keeps the columns of this rank's input slice ([r, in_local]) and B rows
split_range(out) ([out_split, r]). B is stored as trained; the LoRA scaling (alpha/r, or alpha/sqrt(r)
with rsLoRA) travels in `LoraWeights.scale` and the kernels apply it to the rank-sized A output.

Storage dtype (`chameleon.core.memory.adapter_storage_dtype`, the rule the router applies too): policy
"auto" keeps a float32 model's 16-bit (bfloat16/float16) adapters in 16 bits, which is lossless
(their float32 upcast is exact) and halves the bytes a decode step reads; "model" converts every
adapter to the model dtype. "auto" applies on CPU float32 with one rank (`effective_policy`), where the
C kernel reads 16-bit weights natively; elsewhere the shard runs (and reports in Info) "model". The
pool's pages are raw bytes of the KV pool: a 16-bit adapter is packed into a 16-bit view of them (a
page holds twice as many of its elements). The kernels compute in the activation dtype (the C kernel
widens 16-bit weights in registers; the torch paths, which serve prefill-length segments and
CHAMELEON_CPU_KERNELS=0, upcast per use).

The tensors are packed layer by layer, module by module (A then B) into the assigned pages, in
ascending page order, and used in place as views of the pool. A tensor that would straddle two
non-adjacent pages is used from a contiguous copy (its bytes stay in the pages too, so page accounting
is exact); `AdapterInfo.extra_bytes` reports such copies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from chameleon.core.adapter_files import AdapterHeader, adapter_footprint
from chameleon.core.memory import (
    COLUMN_PARALLEL,
    ModelShape,
    adapter_storage_dtype,
    shard_ranges,
    split_range,
)
from shard.lora.errors import AdapterError
from shard.lora.peft_loader import load_peft, read_header
from shard.model.dist import DistContext
from shard.model.pool import ShardPagePool


@dataclass(frozen=True, slots=True)
class AdapterInfo:
    """A resident adapter as the server reports it."""

    adapter_id: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    nbytes: int             # true size of this rank's slice (core.memory.adapter_bytes, storage dtype)
    pages: tuple[int, ...]  # pool pages it occupies (empty when loaded outside the pool)
    extra_bytes: int = 0    # bytes held outside the pool (all of it when pages is empty)
    dtype: str = "float32"  # storage dtype of A/B ("float32", "bfloat16", "float16")


@dataclass(frozen=True, slots=True)
class LoraWeights:
    """This rank's slice of one adapter, ready for the kernels."""

    adapter_id: str
    rank: int
    r_sizes: tuple[int, ...]                             # split_sizes(r, world): column-parallel A rows
    layers: tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], ...]  # per layer: module -> (A, B)
    out_ranges: dict[str, tuple[int, int]]                # row-parallel module -> output columns of B
    scale: float = 1.0                                    # y += B @ (scale * (A @ x))


class AdapterStore:
    """Loads/offloads adapters; `get` hands LoraWeights to the kernels. Not thread-safe by design:
    the server calls it from its single model thread."""

    def __init__(self, shape: ModelShape, dtype: torch.dtype, device: torch.device, dist: DistContext,
                 block_size: int, pool: Callable[[], ShardPagePool | None],
                 adapter_dtype: str = "auto") -> None:
        self.shape, self.dtype, self.device, self.dist = shape, dtype, device, dist
        self.block_size = block_size
        adapter_storage_dtype(_name(dtype), (), adapter_dtype)  # validates the policy early
        self.adapter_dtype = effective_policy(adapter_dtype, self.device, dtype, dist.world_size)
        self._pool = pool
        self._infos: dict[str, AdapterInfo] = {}
        self._weights: dict[str, LoraWeights] = {}
        self.version = 0  # bumped on every load/offload (kernels cache concatenations by it)

    @property
    def dtype_bytes(self) -> int:
        """Bytes per element of the pool (model/KV dtype): sets the page size."""
        return torch.empty((), dtype=self.dtype).element_size()

    def header(self, path: str | Path) -> AdapterHeader:
        """The adapter folder's header, validated for this base model (no tensor data is read)."""
        return read_header(path, self.shape)

    def storage_dtype(self, header: AdapterHeader) -> torch.dtype:
        """The dtype this adapter's A/B are kept in (chameleon.core.memory.adapter_storage_dtype)."""
        return getattr(torch, header.storage_dtype(_name(self.dtype), self.adapter_dtype))

    def _pages(self, header: AdapterHeader) -> int:
        """chameleon.core.adapter_files.adapter_footprint: the one sizing the router applies too."""
        return adapter_footprint(self.shape, header.rank, header.targets, _name(self.storage_dtype(header)),
                                 self.dtype_bytes, self.block_size, self.dist.world_size).pages

    def pages_needed(self, path: str | Path) -> int:
        """Pool pages the adapter takes on every rank (chameleon.core.adapter_files.adapter_footprint)."""
        return self._pages(self.header(path))

    def has(self, adapter_id: str) -> bool:
        return adapter_id in self._infos

    def info(self, adapter_id: str) -> AdapterInfo:
        if adapter_id not in self._infos:
            raise AdapterError(f"adapter {adapter_id!r} is not loaded on this shard")
        return self._infos[adapter_id]

    def resident(self) -> list[AdapterInfo]:
        return list(self._infos.values())

    def used_pages(self) -> set[int]:
        return {p for info in self._infos.values() for p in info.pages}

    def get(self, adapter_id: str) -> LoraWeights:
        if adapter_id not in self._weights:
            raise AdapterError(f"adapter {adapter_id!r} is not loaded on this shard; load it first")
        return self._weights[adapter_id]

    def load(self, adapter_id: str, path: str | Path, pages: list[int] | None = None) -> AdapterInfo:
        """Idempotent per id. pages=None keeps the adapter outside the pool. Raises AdapterError."""
        if adapter_id in self._infos:
            return self._infos[adapter_id]
        header = self.header(path)
        if pages is not None:
            pages = self._check_pages(header, pages)
        stored = self.storage_dtype(header)
        peft = load_peft(path, self.shape, stored)
        tensors = self._convert(peft.header, peft.weights)
        placed, extra = self._place(tensors, pages, stored) if pages is not None else (tensors, None)
        weights = self._assemble(adapter_id, header, placed)
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        self._infos[adapter_id] = AdapterInfo(adapter_id, header.rank, header.alpha, header.targets, nbytes,
                                              tuple(pages or ()), nbytes if extra is None else extra,
                                              _name(stored))
        self._weights[adapter_id] = weights
        self.version += 1
        return self._infos[adapter_id]

    def offload(self, adapter_id: str) -> tuple[int, ...]:
        """Forget the adapter; returns the pages it held (now free for KV or other adapters)."""
        info = self.info(adapter_id)
        del self._infos[adapter_id], self._weights[adapter_id]
        self.version += 1
        return info.pages

    def rebase(self, move: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """The pool buffer moved (a CUDA resize, shard.model.pool): re-point every A/B view with
        `move` (tensors that are not views of the old buffer come back unchanged)."""
        for aid, w in list(self._weights.items()):
            layers = tuple({m: (move(a), move(b)) for m, (a, b) in layer.items()} for layer in w.layers)
            self._weights[aid] = dataclasses.replace(w, layers=layers)
        self.version += 1

    def _check_pages(self, header: AdapterHeader, pages: list[int]) -> list[int]:
        pool = self._pool()
        if pool is None:
            raise AdapterError("no page pool is allocated yet (Warmup first), cannot load into pages")
        need = self._pages(header)
        if len(pages) != need:
            raise AdapterError(f"adapter {header.path} (rank {header.rank}, {len(header.targets)} modules, "
                               f"stored in {_name(self.storage_dtype(header))}) needs {need} pages, got "
                               f"{len(pages)}")
        taken = self.used_pages()
        bad = [p for p in pages if not 0 < p < pool.num_pages or p in taken]
        if bad or len(set(pages)) != len(pages):
            raise AdapterError(f"pages {bad or pages} are invalid, duplicated or held by another adapter "
                               f"(pool has pages 1..{pool.num_pages - 1})")
        return sorted(pages)

    def _convert(self, spec: AdapterHeader, full: dict) -> list[torch.Tensor]:
        """This rank's (A, B) per layer and target, flattened in packing order."""
        world, rank = self.dist.world_size, self.dist.rank
        out: list[torch.Tensor] = []
        for layer in range(self.shape.num_layers):
            for module in spec.targets:
                a, b = full[(layer, module)]
                (i0, i1), (o0, o1) = shard_ranges(self.shape, module, world, rank)
                if module in COLUMN_PARALLEL:
                    r0, r1 = split_range(spec.rank, world, rank)
                    a_loc, b_loc = a[r0:r1], b[o0:o1]
                else:
                    s0, s1 = split_range(self.shape.module_dims(module)[1], world, rank)
                    a_loc, b_loc = a[:, i0:i1], b[s0:s1]
                out += [a_loc.contiguous().to(self.device), b_loc.contiguous().to(self.device)]
        return out

    def _place(self, tensors: list[torch.Tensor], pages: list[int],
               stored: torch.dtype) -> tuple[list[torch.Tensor], int]:
        """Write the packed tensors (all of dtype `stored`) into `pages`, seen as `stored` elements;
        return views into the pool (copies where a tensor straddles non-adjacent pages) and the bytes of
        those copies."""
        pool = self._pool()
        if pool is None:
            raise AdapterError("no page pool is allocated")
        buf = pool.buffer.view(stored)  # the same bytes; a page holds page_bytes / itemsize elements
        pe = pool.page_bytes // buf.element_size()
        placed, extra, off = [], 0, 0
        for t in tensors:
            n, flat = t.numel(), t.reshape(-1)
            pos = off
            while pos < off + n:
                take = min(pe - pos % pe, off + n - pos)
                start = pages[pos // pe] * pe + pos % pe
                buf[start:start + take].copy_(flat[pos - off:pos - off + take])
                pos += take
            first, last = off // pe, (off + n - 1) // pe
            if n and all(pages[i + 1] == pages[i] + 1 for i in range(first, last)):
                start = pages[first] * pe + off % pe
                placed.append(buf[start:start + n].view(t.shape))
            else:
                placed.append(t)
                extra += n * t.element_size()
            off += n
        return placed, extra

    def _assemble(self, adapter_id: str, spec: AdapterHeader, placed: list[torch.Tensor]) -> LoraWeights:
        it = iter(placed)
        layers = tuple({m: (next(it), next(it)) for m in spec.targets} for _ in range(self.shape.num_layers))
        world, rank = self.dist.world_size, self.dist.rank
        out_ranges = {m: split_range(self.shape.module_dims(m)[1], world, rank)
                      for m in spec.targets if m not in COLUMN_PARALLEL}
        r_sizes = tuple(split_range(spec.rank, world, k)[1] - split_range(spec.rank, world, k)[0]
                        for k in range(world))
        return LoraWeights(adapter_id, spec.rank, r_sizes, layers, out_ranges, spec.scaling)


def effective_policy(policy: str, device: torch.device, dtype: torch.dtype, world: int) -> str:
    """The storage policy this shard applies (and reports in Info, so the router sizes adapters alike).

    "auto" stays "auto" where 16-bit storage is read natively: CPU, float32, one rank (the C BGMV kernel
    widens it in registers). Elsewhere (tensor parallelism and CUDA run the torch LoRA paths, which
    would upcast every adapter tensor on every use) it becomes "model". A 16-bit model stores adapters
    in its own dtype under either policy."""
    if policy == "auto" and not (device.type == "cpu" and dtype == torch.float32 and world == 1):
        return "model"
    return policy


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
