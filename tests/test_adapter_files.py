"""chameleon.core.adapter_files: the id rule, base-model names and the folder header reader (no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chameleon.core.adapter_files import (
    AdapterFolderError,
    AdapterIdError,
    adapter_footprint,
    base_model_names,
    check_adapter_id,
    read_adapter_header,
    valid_adapter_id,
)
from chameleon.core.memory import ModelShape, adapter_pages
from tests.adapter_folders import lora_tensors, write_peft

SHAPE = ModelShape(num_layers=2, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2,
                   head_dim=16, vocab_size=100)


@pytest.mark.parametrize("good", ["a", "r8-00", "A.b_c-d", "x" * 128, "9lives"])
def test_plain_ids_pass(good: str) -> None:
    assert valid_adapter_id(good) and check_adapter_id(good) == good


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", ".hidden", "-x", "a..b", "x" * 129, "a@b", "a+b",
                                 "/abs", "a b", "a\\b"])
def test_other_ids_are_refused_with_the_rule(bad: str) -> None:
    assert not valid_adapter_id(bad)
    with pytest.raises(AdapterIdError, match="not a plain name: use 1-128 letters"):
        check_adapter_id(bad)


def test_base_model_names() -> None:
    assert base_model_names("served", "org/model", "model", "served", "") == \
        ("served", "org/model", "model", "tgi", "dummy")


def test_header(tmp_path: Path) -> None:
    tensors = lora_tensors(SHAPE, 8, ("down_proj", "q_proj"), {"q_proj": "BF16", "down_proj": "F16"})
    path = write_peft(tmp_path / "a", 8, tensors, {"lora_alpha": 4, "use_rslora": True})
    h = read_adapter_header(path, SHAPE)
    assert (h.rank, h.alpha, h.scaling, h.targets) == (8, 4.0, 4 / 8 ** 0.5, ("q_proj", "down_proj"))
    assert h.file_dtypes == ("BF16", "F16") and len(h.tensors) == 8
    assert h.storage_dtype("float32", "auto") == "float32"  # two 16-bit types: no lossless one
    size = adapter_footprint(SHAPE, 8, h.targets, "bfloat16", 4, 16, 2)
    assert size.pages == adapter_pages(SHAPE, 8, h.targets, 4, 16, 2, adapter_dtype_bytes=2)


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(AdapterFolderError, match="does not exist"):
        read_adapter_header(tmp_path / "nope", SHAPE)
    path = write_peft(tmp_path / "p", 8, lora_tensors(SHAPE, 8, ("q_proj",)))
    (path / "adapter_model.safetensors").rename(path / "adapter_model.bin")
    with pytest.raises(AdapterFolderError, match=r"adapter_model\.bin.*pickle"):
        read_adapter_header(path, SHAPE)
    path = write_peft(tmp_path / "t", 8, lora_tensors(SHAPE, 8, ("q_proj",)))
    weights = path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4])  # truncated data
    with pytest.raises(AdapterFolderError, match="corrupt"):
        read_adapter_header(path, SHAPE)
    path = write_peft(tmp_path / "r", 8, lora_tensors(SHAPE, 8, ("q_proj",)), {"r": 0})
    with pytest.raises(AdapterFolderError, match="positive integer"):
        read_adapter_header(path, SHAPE)
    path = write_peft(tmp_path / "j", 8, lora_tensors(SHAPE, 8, ("q_proj",)))
    (path / "adapter_config.json").write_text(json.dumps([1]))
    with pytest.raises(AdapterFolderError, match="JSON object"):
        read_adapter_header(path, SHAPE)
    path = write_peft(tmp_path / "s", 8, lora_tensors(SHAPE, 8, ("q_proj",)))
    with pytest.raises(AdapterFolderError, match="different base model"):
        read_adapter_header(path, ModelShape(2, 32, 128, 4, 2, 8, 100))
