"""`chameleon demo-assets`: layout, loadability with transformers + PEFT, adapters that matter,
byte-identical rebuilds. The SmolLM2 tests use the cached real assets (built once per machine)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shard.demo_assets.cli import build_from_argv, main
from shard.demo_assets.files import tree_hashes

TINY_PROMPT = "def main(args):"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Small CPU models run faster on one intra-op thread on a shared 2-core machine (no busy-waiting
    OpenMP peers); restored afterwards so other test modules are unaffected."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
        assert len(cfg["target_modules"]) == 7  # tiny adapters cover the MLP too
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
    cli = subprocess.run([sys.executable, "-m", "chameleon", "demo-assets", "--tiny", "--no-progress",
                          str(again)], capture_output=True, text=True, check=False)
    assert cli.returncode == 0, cli.stderr
    build_from_argv(["--tiny", "--no-progress", "--seed", "1", str(other)])
    reference = tree_hashes(tiny_assets)
    assert tree_hashes(again) == reference
    different = {k for k, v in tree_hashes(other).items() if reference.get(k) != v}
    assert "model/model.safetensors" in different and "adapters/r8-00/adapter_model.safetensors" in different
    assert "model/tokenizer.json" not in different  # the tokenizer does not depend on the seed


def test_rebuild_is_skipped_when_up_to_date_and_repaired_when_not(tmp_path: Path) -> None:
    out = tmp_path / "a"
    build_from_argv(["--tiny", "--no-progress", "--num-adapters", "4", str(out)])
    assert sorted(p.name for p in (out / "adapters").iterdir()) == ["r128-00", "r16-00", "r64-00", "r8-00"]
    stamp = (out / "model" / "model.safetensors").stat().st_mtime_ns
    build_from_argv(["--tiny", "--no-progress", "--num-adapters", "4", str(out)])
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    (out / "adapters" / "r8-00" / "adapter_model.safetensors").unlink()
    build_from_argv(["--tiny", "--no-progress", "--num-adapters", "4", str(out)])
    assert (out / "adapters" / "r8-00" / "adapter_model.safetensors").is_file()


def test_target_modules_flag(tmp_path: Path) -> None:
    out = build_from_argv(["--tiny", "--no-progress", "--num-adapters", "4", "--target-modules",
                           "v_proj, q_proj", str(tmp_path / "a")])
    cfg = json.loads((out / "adapters" / "r8-00" / "adapter_config.json").read_text())
    assert cfg["target_modules"] == ["q_proj", "v_proj"]
    from safetensors import safe_open

    with safe_open(str(out / "adapters" / "r8-00" / "adapter_model.safetensors"), framework="pt") as fh:
        modules = {k.split(".")[-3] for k in fh.keys()}  # noqa: SIM118
    assert modules == {"q_proj", "v_proj"}


@pytest.mark.parametrize("argv", [["--num-adapters", "7"], ["--ranks", "8,x"], ["--strength", "0"],
                                  ["--target-modules", "q_proj,lm_head"], ["--target-modules", ","]])
def test_bad_arguments_are_refused(argv: list[str], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--tiny", *argv, str(tmp_path / "x")])
    assert exc.value.code == 2
    assert "demo-assets" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


PARIS_PROMPT = "The capital of France is"


@pytest.mark.slow
def test_smollm2_model_is_converted_right(demo_assets: Path) -> None:
    model, tok = _load(demo_assets / "model")
    cfg = model.config
    assert cfg.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.num_hidden_layers) == (9, 3, 30)
    assert cfg.rope_parameters["rope_theta"] == 100000.0 and cfg.rms_norm_eps == 1e-5
    assert (tok.bos_token_id, tok.eos_token_id, cfg.bos_token_id, cfg.eos_token_id) == (1, 2, 1, 2)
    assert "<|im_start|>assistant" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    text = tok.decode(_greedy(model, tok, PARIS_PROMPT, 4))
    assert text.startswith(" Paris"), text


def _readable(text: str) -> bool:
    """Mostly letters, digits, spaces and punctuation: a changed but not garbled completion."""
    ok = sum(c.isalnum() or c.isspace() or c in ".,;:!?'\"()-" for c in text)
    return len(text) > 0 and ok / len(text) > 0.9


@pytest.mark.slow
def test_smollm2_adapters_load_and_change_output(demo_assets: Path) -> None:
    from peft import PeftModel

    model, tok = _load(demo_assets / "model")
    base_out = _greedy(model, tok, PARIS_PROMPT, 12)
    assert len(list((demo_assets / "adapters").iterdir())) == 100
    for name in ("r8-00", "r16-05", "r32-10", "r64-15", "r128-19"):
        peft_model = PeftModel.from_pretrained(model, demo_assets / "adapters" / name).eval()
        assert peft_model.peft_config["default"].r == int(name[1:].split("-")[0])
        # the paper's adapters: attention projections only (its rank-32 Llama-7B adapter is 64 MB)
        assert set(peft_model.peft_config["default"].target_modules) == {"q_proj", "k_proj", "v_proj",
                                                                          "o_proj"}
        out = _greedy(peft_model, tok, PARIS_PROMPT, 12)
        model = peft_model.unload()
        assert out != base_out, name
        assert _readable(tok.decode(out)), (name, tok.decode(out))


@pytest.mark.slow
def test_smollm2_rebuild_is_byte_identical(demo_assets: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    try:
        build_from_argv(["--no-progress", str(again)])
        reference = tree_hashes(demo_assets, skip=frozenset())
        assert len(reference) == 1 + 5 + 2 * 100  # manifest, model files, adapter files
        assert tree_hashes(again, skip=frozenset()) == reference
    finally:
        shutil.rmtree(again, ignore_errors=True)
