"""AdapterStore and PEFT loading: clear errors for bad adapters, true page accounting, offload."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from chameleon.core.memory import adapter_bytes, adapter_pages
from shard.lora.errors import AdapterError
from shard.model.dist import DistContext
from shard.model.runner import ForwardBatch, ModelRunner

BLOCK = 4


@pytest.fixture()
def runner(tiny_root: Path) -> ModelRunner:
    return ModelRunner(tiny_root / "model", dtype=torch.float32, device="cpu", dist=DistContext.single(),
                       num_pages=600, block_size=BLOCK)


def _copy(tiny_root: Path, tmp_path: Path, name: str = "a8") -> Path:
    dst = tmp_path / name
    shutil.copytree(tiny_root / "adapters" / name, dst)
    return dst


def test_pickle_bin_is_refused(runner: ModelRunner, tiny_root: Path, tmp_path: Path) -> None:
    path = _copy(tiny_root, tmp_path)
    (path / "adapter_model.safetensors").rename(path / "adapter_model.bin")
    with pytest.raises(AdapterError, match=r"adapter_model\.bin.*pickle"):
        runner.adapter_store.load("x", path)


def test_missing_and_corrupt(runner: ModelRunner, tiny_root: Path, tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="does not exist"):
        runner.adapter_store.load("x", tmp_path / "nope")
    path = _copy(tiny_root, tmp_path)
    (path / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(AdapterError, match="corrupt"):
        runner.adapter_store.load("x", path)
    (path / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="not valid JSON"):
        runner.adapter_store.load("x", path)
    assert not runner.adapter_store.has("x")


def test_wrong_hidden_size(runner: ModelRunner, tiny_root: Path, tmp_path: Path) -> None:
    path = _copy(tiny_root, tmp_path)
    tensors = load_file(path / "adapter_model.safetensors")
    key = next(k for k in tensors if "q_proj.lora_A" in k)
    tensors[key] = torch.zeros(8, 64)  # trained for hidden size 64, base has 96
    save_file(tensors, path / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match="different base model"):
        runner.adapter_store.load("x", path)


def test_unknown_target_module(runner: ModelRunner, tiny_root: Path, tmp_path: Path) -> None:
    path = _copy(tiny_root, tmp_path)
    tensors = load_file(path / "adapter_model.safetensors")
    tensors["base_model.model.lm_head.lora_A.weight"] = torch.zeros(8, 96)
    save_file(tensors, path / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match="unknown target module"):
        runner.adapter_store.load("x", path)


def test_unsupported_options(runner: ModelRunner, tiny_root: Path, tmp_path: Path) -> None:
    path = _copy(tiny_root, tmp_path)
    cfg = json.loads((path / "adapter_config.json").read_text())
    (path / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(AdapterError, match="use_dora"):
        runner.adapter_store.load("x", path)


def test_pages_accounting_and_offload(runner: ModelRunner, tiny_root: Path) -> None:
    store, pool = runner.adapter_store, runner.pool
    assert pool is not None
    path = tiny_root / "adapters" / "a128"
    spec = store.header(path)
    need = store.pages_needed(path)
    assert need == adapter_pages(runner.shape, 128, spec.targets, 4, BLOCK)
    with pytest.raises(AdapterError, match="needs"):
        store.load("a128", path, list(range(1, need)))
    pages = list(range(10, 10 + need))  # adjacent pages: the weights live inside the pool
    info = store.load("a128", path, pages)
    assert info.nbytes == adapter_bytes(runner.shape, 128, spec.targets, 4)
    assert info.extra_bytes == 0 and info.pages == tuple(pages)
    a, b = store.get("a128").layers[1]["down_proj"]
    lo, hi = pool.buffer.data_ptr(), pool.buffer.data_ptr() + pool.nbytes
    assert lo <= a.data_ptr() < hi and lo <= b.data_ptr() < hi
    small = tiny_root / "adapters" / "a8"
    with pytest.raises(AdapterError, match="held by another adapter"):
        store.load("other", small, pages[:store.pages_needed(small)])
    assert store.offload("a128") == tuple(pages)
    assert not store.has("a128") and store.used_pages() == set()
    with pytest.raises(AdapterError, match="not loaded"):
        store.offload("a128")


def test_forward_with_unknown_adapter(runner: ModelRunner) -> None:
    fb = ForwardBatch.build([[5, 6]], [2], [[3]], BLOCK, ["ghost"])
    with pytest.raises(AdapterError, match="ghost"):
        runner.forward(fb)
