"""`chameleon demo-assets --random-llama`: real-shape random Llama + adapters (only the tiny preset is
built here; the 7b preset's sizes are checked from its shapes, without generating it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shard.demo_assets import random_llama
from shard.demo_assets.cli import RANDOM_LLAMA_PRESETS, build_from_argv
from shard.demo_assets.random_llama import PRESETS, random_tensor, target_weights


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    mp = pytest.MonkeyPatch()
    mp.setattr(random_llama, "MAX_SHARD_BYTES", 2 * 1024 ** 2)  # 5 MB of weights -> several shards
    try:
        return build_from_argv(["--random-llama", "tiny", "--num-adapters", "5", "--no-progress",
                                str(tmp_path_factory.mktemp("random-llama"))])
    finally:
        mp.undo()


def test_presets_listed_by_the_cli_exist() -> None:
    assert set(RANDOM_LLAMA_PRESETS) == set(PRESETS)
    seven = PRESETS["7b"]
    assert (seven.hidden_size, seven.num_layers, seven.num_heads, seven.intermediate_size,
            seven.vocab_size) == (4096, 32, 32, 11008, 32000)


def test_rank_32_adapter_on_7b_is_64_mib_in_16_bits() -> None:
    weights = target_weights(PRESETS["7b"], ("q_proj", "k_proj", "v_proj", "o_proj"))
    assert sum((t.fan_in + t.fan_out) * 32 * 2 for t in weights) == 64 * 1024 ** 2


def test_weights_are_deterministic_per_seed() -> None:
    a = random_tensor("model.layers.0.self_attn.q_proj.weight", (8, 8), "tiny", 0)
    assert a.dtype == torch.bfloat16
    assert torch.equal(a, random_tensor("model.layers.0.self_attn.q_proj.weight", (8, 8), "tiny", 0))
    assert not torch.equal(a, random_tensor("model.layers.0.self_attn.q_proj.weight", (8, 8), "tiny", 1))


def test_tiny_preset_loads_in_transformers_and_peft(assets: Path) -> None:
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model_dir = assets / "model"
    shards = sorted(p.name for p in model_dir.glob("*.safetensors"))
    assert len(shards) > 1 and (model_dir / "model.safetensors.index.json").is_file()
    config = AutoConfig.from_pretrained(model_dir)
    shape = PRESETS["tiny"]
    assert (config.hidden_size, config.num_hidden_layers, config.num_key_value_heads,
            config.vocab_size) == (shape.hidden_size, shape.num_layers, shape.num_kv_heads, shape.vocab_size)
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert len(tok) == shape.vocab_size
    ids = tok("def main():\n    return 0", return_tensors="pt").input_ids
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    base = model(ids).logits
    assert base.shape == (1, ids.shape[1], shape.vocab_size) and torch.isfinite(base).all()
    adapters = sorted(p.name for p in (assets / "adapters").iterdir())
    assert adapters == ["r128-00", "r16-00", "r32-00", "r64-00", "r8-00"]
    cfg = json.loads((assets / "adapters" / "r32-00" / "adapter_config.json").read_text())
    assert cfg["r"] == 32 and cfg["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
    tuned = PeftModel.from_pretrained(model, assets / "adapters" / "r32-00")
    out = tuned(ids).logits
    assert torch.isfinite(out).all() and not torch.allclose(out, base)


def test_rebuild_is_a_no_op_and_tiny_conflicts(assets: Path) -> None:
    stamp = (assets / "manifest.json").stat().st_mtime_ns
    build_from_argv(["--random-llama", "tiny", "--num-adapters", "5", "--no-progress", str(assets)])
    assert (assets / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit) as exc:
        build_from_argv(["--random-llama", "tiny", "--tiny", str(assets)])
    assert exc.value.code == 2
