"""Adapter storage dtype: a float32 model keeps 16-bit adapters in 16 bits in the pool (exactly their
on-disk values, half the pages), the router sizes them in the same pages, and the C LoRA kernel reads
bfloat16/float16 weights like their float32 upcast."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chameleon.core.memory import adapter_bytes, adapter_pages, adapter_storage_dtype, page_bytes
from router.engine.adapter_registry import AdapterRegistry
from shard.lora.cpu_bgmv import CpuBgmv, TableCache
from shard.lora.store import LoraWeights, effective_policy
from shard.model.cpu_kernels import CpuKernels
from shard.model.dist import DistContext
from shard.model.runner import ModelRunner
from tests.shard_model.tiny import ADAPTERS

BLOCK = 4
NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _runner(root: Path, policy: str = "auto", dtype: torch.dtype = torch.float32) -> ModelRunner:
    return ModelRunner(root / "model", dtype=dtype, device="cpu", dist=DistContext.single(), num_pages=1200,
                       block_size=BLOCK, adapter_dtype=policy)


def test_storage_rule() -> None:
    assert adapter_storage_dtype("float32", ["BF16"]) == "bfloat16"
    assert adapter_storage_dtype("float32", ["F16"]) == "float16"
    assert adapter_storage_dtype("float32", ["bfloat16"]) == "bfloat16"
    assert adapter_storage_dtype("float32", ["F32"]) == "float32"
    assert adapter_storage_dtype("float32", ["BF16", "F16"]) == "float32"  # no one lossless 16-bit type
    assert adapter_storage_dtype("float32", ["BF16", "F32"]) == "float32"
    assert adapter_storage_dtype("float32", []) == "float32"
    assert adapter_storage_dtype("float32", ["BF16"], "model") == "float32"
    assert adapter_storage_dtype("bfloat16", ["F32"]) == "bfloat16"  # a 16-bit model converts as before
    assert adapter_storage_dtype("float16", ["BF16"]) == "float16"
    with pytest.raises(ValueError, match="policy"):
        adapter_storage_dtype("float32", ["BF16"], "float64")


def test_auto_applies_where_the_kernel_reads_16_bits() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert effective_policy("auto", cpu, torch.float32, 1) == "auto"
    assert effective_policy("auto", cpu, torch.float32, 2) == "model"  # TP: torch paths
    assert effective_policy("auto", cuda, torch.float32, 1) == "model"
    assert effective_policy("auto", cpu, torch.bfloat16, 1) == "model"
    assert effective_policy("model", cpu, torch.float32, 1) == "model"


def test_16bit_adapters_are_stored_in_16_bits(tiny_root: Path) -> None:
    runner = _runner(tiny_root)
    store, pool = runner.adapter_store, runner.pool
    assert pool is not None
    first = 1
    for spec in ADAPTERS:
        path = tiny_root / "adapters" / spec.name
        targets = store.header(path).targets
        want_bytes = 2 if spec.dtype != torch.float32 else 4
        need = store.pages_needed(path)
        assert need == adapter_pages(runner.shape, spec.rank, targets, 4, BLOCK,
                                     adapter_dtype_bytes=want_bytes)
        pages = list(range(first, first + need))
        first += need
        info = store.load(spec.name, path, pages)
        assert info.dtype == NAMES[spec.dtype] and info.pages == tuple(pages) and info.extra_bytes == 0
        assert info.nbytes == adapter_bytes(runner.shape, spec.rank, targets, want_bytes)
        weights = store.get(spec.name)
        on_disk = load_file(path / "adapter_model.safetensors")
        lo, hi = pool.buffer.data_ptr(), pool.buffer.data_ptr() + pool.nbytes
        for layer, modules in enumerate(weights.layers):
            for module, (a, b) in modules.items():
                assert a.dtype == b.dtype == spec.dtype
                assert lo <= a.data_ptr() < hi and lo <= b.data_ptr() < hi
                key = next(k for k in on_disk if f"layers.{layer}." in k and f"{module}.lora_A" in k)
                assert torch.equal(a, on_disk[key].to(spec.dtype))  # bit-exact: no conversion, no scaling
                assert torch.equal(b, on_disk[key.replace("lora_A", "lora_B")].to(spec.dtype))
        assert weights.scale == pytest.approx(store.header(path).scaling)
    assert sum(len(a.pages) for a in store.resident()) == first - 1  # what the headroom reports
    for spec in ADAPTERS:
        pages = store.info(spec.name).pages
        assert store.offload(spec.name) == pages  # offload frees exactly the pages it was given
    assert store.used_pages() == set()


def test_16bit_storage_halves_the_pages(tiny_root: Path) -> None:
    auto, model = _runner(tiny_root).adapter_store, _runner(tiny_root, "model").adapter_store
    path = tiny_root / "adapters" / "a64"  # bfloat16 file, rank 64
    spec = auto.header(path)
    assert auto.storage_dtype(spec) == torch.bfloat16 and model.storage_dtype(spec) == torch.float32
    full = adapter_bytes(auto.shape, 64, spec.targets, 4)
    assert model.load("x", path, list(range(1, 1 + model.pages_needed(path)))).nbytes == full
    assert auto.load("x", path, list(range(1, 1 + auto.pages_needed(path)))).nbytes == full // 2
    page = page_bytes(auto.shape, BLOCK, 4)
    assert auto.pages_needed(path) == -(-(full // 2) // page) < model.pages_needed(path) == -(-full // page)


@pytest.mark.parametrize("policy", ["auto", "model"])
@pytest.mark.parametrize("world", [1, 2])
def test_router_pages_equal_the_shards(tiny_root: Path, policy: str, world: int) -> None:
    store = _runner(tiny_root, policy).adapter_store
    store.dist = DistContext(rank=0, world_size=world)  # sizing only: no collective runs here
    registry = AdapterRegistry(store.shape, 4, BLOCK, world, tiny_root / "adapters", model_dtype="float32",
                               adapter_policy=policy)
    assert sorted(registry.scan()) == sorted(s.name for s in ADAPTERS)
    for spec in ADAPTERS:
        meta = registry.get(spec.name)
        path = tiny_root / "adapters" / spec.name
        assert meta.pages == store.pages_needed(path), spec.name
        assert meta.dtype == NAMES[store.storage_dtype(store.header(path))]
        if world == 1:
            assert meta.nbytes == adapter_bytes(store.shape, spec.rank, store.header(path).targets,
                                                2 if meta.dtype != "float32" else 4)


def test_router_sizes_shard_reported_adapters_in_their_dtype(tiny_root: Path) -> None:
    store = _runner(tiny_root).adapter_store
    registry = AdapterRegistry(store.shape, 4, BLOCK, 1, None, model_dtype="float32", adapter_policy="auto")
    path = tiny_root / "adapters" / "a16"
    spec = store.header(path)
    registry.add_from_shard("a16", spec.rank, spec.alpha, spec.targets, "bfloat16")
    registry.add_from_shard("old", spec.rank, spec.alpha, spec.targets)  # an older shard: model dtype
    assert registry.get("a16").pages == store.pages_needed(path)
    assert registry.get("old").pages == adapter_pages(store.shape, spec.rank, spec.targets, 4, BLOCK)


def test_bfloat16_model_keeps_adapters_in_its_dtype(tiny_root: Path) -> None:
    store = _runner(tiny_root, dtype=torch.bfloat16).adapter_store
    for name in ("a8", "b128"):  # float32 and float16 files
        path = tiny_root / "adapters" / name
        info = store.load(name, path, list(range(1, 1 + store.pages_needed(path))))
        a, b = next(iter(store.get(name).layers[0].values()))
        assert info.dtype == "bfloat16" and a.dtype == b.dtype == torch.bfloat16
        store.offload(name)


KERNELS = CpuKernels.load()
needs_kernels = pytest.mark.skipif(KERNELS is None, reason="no gcc / AVX2+FMA on this machine")


def _adapter(name: str, r: int, k: int, n: int, dtype: torch.dtype, scale: float, g: torch.Generator,
             modules: tuple[str, ...] = ("q_proj", "o_proj")) -> LoraWeights:
    layers = tuple({m: (torch.randn(r, k, generator=g).to(dtype),
                        (0.1 * torch.randn(n, r, generator=g)).to(dtype)) for m in modules} for _ in range(2))
    return LoraWeights(name, r, (r,), layers, {}, scale)


@needs_kernels
@pytest.mark.parametrize("k", [37, 64, 576])
def test_lora_kernel_reads_16bit_weights(k: int) -> None:
    """bf16 and fp16 A/B (mixed with fp32 adapters in one call, non-unit scales, odd K tails) equal
    torch on their float32 upcast."""
    g = torch.Generator().manual_seed(k)
    n = 29 if k != 576 else 1536
    dtypes = [torch.bfloat16, torch.float16, torch.float32, torch.bfloat16, torch.float16]
    ranks = [8, 16, 3, 128, 64]
    scales = [2.0, 0.5, 1.0, 1.5, 32 / 8 ** 0.5]
    weights = [_adapter(f"a{i}", ranks[i], k, n, dtypes[i], scales[i], g,
                        ("q_proj", "o_proj") if i % 2 == 0 else ("q_proj",)) for i in range(5)]
    counts = [1, 3, 2, 1, 4]
    t = sum(counts)
    perm = torch.randperm(t, generator=g)
    rows, start = [], 0
    for c in counts:
        rows.append(perm[start:start + c])
        start += c
    cpu = CpuBgmv.build(KERNELS, weights, rows, t, TableCache(), 0, torch.device("cpu"), torch.float32)
    assert cpu is not None
    x = torch.randn(t, k, generator=g)
    for layer in range(2):
        for module in ("q_proj", "o_proj"):
            y = torch.randn(t, n, generator=g)
            want = y.clone()
            for w, r in zip(weights, rows, strict=True):
                if module in w.layers[layer]:
                    a, b = (m.float() for m in w.layers[layer][module])
                    want[r] += (w.scale * (x[r] @ a.T)) @ b.T
            assert cpu.apply(layer, module, x, y)
            torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4 * max(1.0, want.abs().max().item()))


@needs_kernels
@pytest.mark.parametrize("k", [8, 1])
def test_every_finite_float16_is_read_exactly(k: int) -> None:
    """Every finite float16 bit pattern (zeros, subnormals, normals) read by the kernel equals its
    float32 value: in the 8-wide vector loop (k=8) and in the scalar tail (k=1)."""
    a_all = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).view(torch.float16)
    a_all = a_all[torch.isfinite(a_all)]
    r = 128
    a_all = torch.cat([a_all, torch.zeros((-len(a_all)) % (r * k), dtype=torch.float16)]).reshape(-1, r, k)
    eye = torch.eye(r, dtype=torch.float16)  # B = I: y = A x exactly
    x = torch.eye(k)  # token t picks column t of A
    for a in a_all:
        w = LoraWeights("h", r, (r,), ({"q_proj": (a, eye)},), {}, 1.0)
        cpu = CpuBgmv.build(KERNELS, [w], [slice(0, k)], k, TableCache(), 0, torch.device("cpu"),
                            torch.float32)
        assert cpu is not None
        y = torch.zeros(k, r)
        assert cpu.apply(0, "q_proj", x, y)
        assert torch.equal(y, a.float().T)
