"""`chameleon demo-assets`: layout, loadability with transformers + PEFT, adapters that matter,
byte-identical rebuilds. The SmolLM2 tests use the cached real assets (built once per machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shard.demo_assets.cli import main
from shard.demo_assets.files import tree_hashes

TINY_PROMPT = "def main(args):"


def _greedy(model: torch.nn.Module, tok, prompt: str, n: int = 16) -> list[int]:
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return out[0, ids.input_ids.shape[1]:].tolist()


def _load(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, tok


def _adapter_changes_output(base, tok, adapter_dir: Path, prompt: str, base_out: list[int]) -> bool:
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(base, adapter_dir).eval()
    try:
        return _greedy(peft_model, tok, prompt, len(base_out)) != base_out
    finally:
        peft_model.unload()


def test_tiny_layout(tiny_assets: Path) -> None:
    model_dir = tiny_assets / "model"
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "model.safetensors"):
        assert (model_dir / name).is_file(), name
    config = json.loads((model_dir / "config.json").read_text())
    assert config["num_key_value_heads"] < config["num_attention_heads"]  # GQA
    assert config["num_attention_heads"] % 2 == 0 and config["num_key_value_heads"] % 2 == 0  # TP=2
    assert 1000 <= config["vocab_size"] <= 2000
    tok_cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert tok_cfg["eos_token"] == "<|im_end|>" and tok_cfg["bos_token"] == "<|im_start|>"
    assert "<|im_start|>" in tok_cfg["chat_template"]
    adapters = sorted(p.name for p in (tiny_assets / "adapters").iterdir())
    assert len(adapters) == 8 and {"r8-00", "r128-01"} <= set(adapters)
    for name in adapters:
        cfg = json.loads((tiny_assets / "adapters" / name / "adapter_config.json").read_text())
        assert cfg["peft_type"] == "LORA" and name == f"r{cfg['r']}-{name.split('-')[1]}"
        assert (tiny_assets / "adapters" / name / "adapter_model.safetensors").is_file()


def test_tiny_loads_and_every_adapter_changes_greedy_output(tiny_assets: Path) -> None:
    model, tok = _load(tiny_assets / "model")
    assert tok.eos_token_id == model.config.eos_token_id == 2
    assert tok.decode(tok(TINY_PROMPT).input_ids) == TINY_PROMPT
    base_out = _greedy(model, tok, TINY_PROMPT)
    for adapter in sorted((tiny_assets / "adapters").iterdir()):
        assert _adapter_changes_output(model, tok, adapter, TINY_PROMPT, base_out), adapter.name
    assert _greedy(model, tok, TINY_PROMPT) == base_out  # unload restored the base model


def test_tiny_build_is_byte_identical_and_seeded(tiny_assets: Path, tmp_path: Path) -> None:
    again, other = tmp_path / "again", tmp_path / "other"
    assert main(["--tiny", "--no-progress", str(again)]) == 0
    assert main(["--tiny", "--no-progress", "--seed", "1", str(other)]) == 0
    reference = tree_hashes(tiny_assets)
    assert tree_hashes(again) == reference
    different = {k for k, v in tree_hashes(other).items() if reference.get(k) != v}
    assert "model/model.safetensors" in different and "adapters/r8-00/adapter_model.safetensors" in different
    assert "model/tokenizer.json" not in different  # the tokenizer does not depend on the seed


def test_rebuild_is_skipped_when_up_to_date_and_repaired_when_not(tmp_path: Path) -> None:
    out = tmp_path / "a"
    assert main(["--tiny", "--no-progress", "--num-adapters", "4", str(out)]) == 0
    assert sorted(p.name for p in (out / "adapters").iterdir()) == ["r128-00", "r16-00", "r64-00", "r8-00"]
    stamp = (out / "model" / "model.safetensors").stat().st_mtime_ns
    assert main(["--tiny", "--no-progress", "--num-adapters", "4", str(out)]) == 0
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    (out / "adapters" / "r8-00" / "adapter_model.safetensors").unlink()
    assert main(["--tiny", "--no-progress", "--num-adapters", "4", str(out)]) == 0
    assert (out / "adapters" / "r8-00" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("argv", [["--num-adapters", "7"], ["--ranks", "8,x"], ["--strength", "0"]])
def test_bad_arguments_are_refused(argv: list[str], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--tiny", *argv, str(tmp_path / "x")])
    assert exc.value.code == 2
    assert "demo-assets" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
