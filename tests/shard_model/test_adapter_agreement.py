"""Router and shard agree on every adapter folder: the same page count, storage dtype and byte size, or
the same refusal. Both read folders with chameleon.core.adapter_files; this checks the two call sites feed
it alike (model dtype, policy, pool element size, block size, world) for the tiny demo assets, the test
model's adapters and synthetic folders built to differ in the ways that matter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from chameleon.core.memory import LORA_TARGETS, ModelShape
from router.engine.adapter_registry import AdapterRegistry
from shard.lora.errors import AdapterError
from shard.lora.store import AdapterStore
from shard.model.dist import DistContext
from tests.adapter_folders import lora_tensors, write_peft

BLOCK = 4
DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16"}
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")


def _store(shape: ModelShape, dtype: torch.dtype, policy: str, world: int) -> AdapterStore:
    """Sizing only (no pool, no collective): rank 0 of `world`."""
    return AdapterStore(shape, dtype, torch.device("cpu"), DistContext(rank=0, world_size=world), BLOCK,
                        lambda: None, adapter_dtype=policy)


def _registry(store: AdapterStore, adapter_dir: Path) -> AdapterRegistry:
    """The router as start-up builds it from the shard's Info: dtype, element size, effective policy."""
    return AdapterRegistry(store.shape, store.dtype_bytes, BLOCK, store.dist.world_size, adapter_dir,
                           model_dtype=DTYPES[store.dtype], adapter_policy=store.adapter_dtype)


def _assert_agree(store: AdapterStore, registry: AdapterRegistry, name: str, path: Path) -> None:
    try:
        need = store.pages_needed(path)
    except AdapterError as exc:
        with pytest.raises(ValueError) as refused:  # the router refuses it too, for the same reason
            registry.get(name)
        assert str(exc) in str(refused.value), name
        return
    meta, header = registry.get(name), store.header(path)
    assert meta.pages == need, name
    assert meta.dtype == str(store.storage_dtype(header)).removeprefix("torch."), name
    assert (meta.target_modules, meta.rank, meta.alpha) == (header.targets, header.rank, header.alpha), name


CASES = [(torch.float32, "auto", 1), (torch.float32, "model", 1), (torch.float32, "auto", 2),
         (torch.bfloat16, "auto", 1), (torch.float32, "model", 2)]


@pytest.mark.parametrize(("dtype", "policy", "world"), CASES)
def test_tiny_demo_assets_agree(tiny_assets: Path, dtype: torch.dtype, policy: str, world: int) -> None:
    store = _store(ModelShape.from_model_dir(tiny_assets / "model"), dtype, policy, world)
    registry = _registry(store, tiny_assets / "adapters")
    names = registry.scan()
    assert names
    for name in names:
        _assert_agree(store, registry, name, tiny_assets / "adapters" / name)


@pytest.mark.parametrize(("dtype", "policy", "world"), CASES)
def test_test_model_adapters_agree(tiny_root: Path, dtype: torch.dtype, policy: str, world: int) -> None:
    store = _store(ModelShape.from_model_dir(tiny_root / "model"), dtype, policy, world)
    registry = _registry(store, tiny_root / "adapters")
    names = registry.scan()
    assert len(names) == 8
    for name in names:
        _assert_agree(store, registry, name, tiny_root / "adapters" / name)


def _synthetic(root: Path, shape: ModelShape) -> dict[str, Path]:
    """Folders that differ where the sizing could: dtypes (uniform, mixed within and across modules),
    extra non-LoRA tensors, targets missing in a layer, a config naming modules the file lacks, odd
    ranks; plus folders both sides must refuse."""
    qv = lora_tensors(shape, 8, ("q_proj", "v_proj"), "BF16")
    mixed_ab = lora_tensors(shape, 8, ATTN, "BF16")
    mixed_ab.update({k: ("F32", s) for k, (_, s) in mixed_ab.items() if ".lora_B." in k})
    gone = lora_tensors(shape, 4, ATTN)
    del gone[next(k for k in gone if ".layers.1.self_attn.k_proj.lora_B" in k)]
    folders = {
        "f32-all": (16, lora_tensors(shape, 16, LORA_TARGETS, "F32"), {}),
        "bf16-attn": (8, lora_tensors(shape, 8, ATTN, "BF16"), {}),
        "f16-mlp": (32, lora_tensors(shape, 32, ("gate_proj", "up_proj", "down_proj"), "F16"), {}),
        "mixed-modules": (8, lora_tensors(shape, 8, LORA_TARGETS, {m: "BF16" if m in ATTN else "F16"
                                                                   for m in LORA_TARGETS}), {}),
        "mixed-ab": (8, mixed_ab, {}),
        "odd-rank": (7, lora_tensors(shape, 7, ("k_proj", "o_proj", "down_proj"), "BF16"), {}),
        "config-lists-more": (8, qv, {"target_modules": list(ATTN)}),
        "rslora": (16, lora_tensors(shape, 16, ("q_proj",), "F16"), {"use_rslora": True, "lora_alpha": 3}),
        "extra-non-lora": (8, {**qv, "base_model.model.lm_head.weight": ("BF16", [shape.vocab_size, 8])}, {}),
        "extra-lora-module": (8, {**qv, "base_model.model.lm_head.lora_A.weight":
                                  ("BF16", [8, shape.hidden_size])}, {}),
        "missing-in-a-layer": (4, gone, {}),
        "layer-beyond-model": (8, {**qv, **lora_tensors(shape, 8, ("q_proj",), "BF16",
                                                         [shape.num_layers])}, {}),
        "wrong-rank": (16, lora_tensors(shape, 8, ATTN), {}),
        "dora": (8, qv, {"use_dora": True}),
    }
    return {name: write_peft(root / name, r, tensors, cfg) for name, (r, tensors, cfg) in folders.items()}


@pytest.mark.parametrize(("dtype", "policy", "world"), CASES)
def test_synthetic_folders_agree(tiny_root: Path, tmp_path: Path, dtype: torch.dtype, policy: str,
                                 world: int) -> None:
    shape = ModelShape.from_model_dir(tiny_root / "model")
    folders = _synthetic(tmp_path, shape)
    store = _store(shape, dtype, policy, world)
    registry = _registry(store, tmp_path)
    assert registry.scan() == sorted(folders)  # unusable folders do not stop the scan
    for name, path in folders.items():
        _assert_agree(store, registry, name, path)
    sized = {m.adapter_id for m in registry.all()}
    assert len(sized) == 8 and all(registry.known(n) for n in folders)  # 6 refused, by both, yet known


def test_synthetic_sizes_match_the_loaded_bytes(tiny_root: Path, tmp_path: Path) -> None:
    """World 1: the router's byte size is exactly what the shard loads (mixed dtypes included)."""
    shape = ModelShape.from_model_dir(tiny_root / "model")
    store = _store(shape, torch.float32, "auto", 1)
    registry = _registry(store, tmp_path)
    for name, path in _synthetic(tmp_path, shape).items():
        try:
            info = store.load(name, path)  # outside the pool: the tensors as stored
        except AdapterError:
            continue
        meta = registry.get(name)
        assert (info.nbytes, info.dtype) == (meta.nbytes, meta.dtype), name
    assert registry.get("bf16-attn").dtype == "bfloat16" and registry.get("mixed-ab").dtype == "float32"
    assert registry.get("mixed-modules").dtype == "float32" and registry.get("f16-mlp").dtype == "float16"
